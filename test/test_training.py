"""Training infrastructure: config round trip, deterministic sharding, augmentation + mask split,
loss bookkeeping, scheme-1 distillation against a frozen teacher, exact resume, and a two-process
torchrun (gloo) run whose loss decreases."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from csl_ros.model.assignment import split_label_map
from csl_ros.training.augment import AugmentParams, augment, split_targets
from csl_ros.training.config import TrainConfig, apply_overrides, load_train_config, parse_set_args
from csl_ros.training.distributed import DistEnv, step_indices
from csl_ros.training.student import StudentTask, train_student

PALETTE = np.random.default_rng(7).integers(0, 256, (256, 3)).astype(np.uint8)


def toy_frame(i: int, size=(64, 128)) -> tuple[np.ndarray, np.ndarray]:
    """Road below sky, plus a few blocks of other classes; colour = palette[class] exactly."""
    rng = np.random.default_rng(i)
    h, w = size
    labels = np.zeros((h, w), np.uint8)
    labels[: h // 2] = 10
    for _ in range(4):
        a = h // 4
        y, x = int(rng.integers(0, h - a)), int(rng.integers(0, w - a))
        labels[y:y + a, x:x + a] = int(rng.integers(11, 19))
    labels[:3, :3] = 255
    return PALETTE[labels], labels


class ToyFrames:
    def __init__(self, n=6, size=(64, 128)):
        self.n, self.size = n, size

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return toy_frame(i, self.size)

    def describe(self):
        return "toy"


def tiny_config(out_dir, **extra) -> TrainConfig:
    values = {"student.preset": "r18_fast", "data.crop_height": 64, "data.crop_width": 128,
              "data.min_scale": 0.75, "data.max_scale": 1.25, "optim.batch_size": 2,
              "optim.max_steps": 3, "optim.lr": 1e-3, "student.num_points": 256,
              "run.out_dir": str(out_dir), "run.progress": False, "run.log_every": 1,
              "run.checkpoint_every": 1000, "run.device": "cpu"}
    values.update(extra)
    return apply_overrides(TrainConfig(), values)


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# --- config -------------------------------------------------------------------------------------

def test_config_yaml_round_trip(tmp_path):
    cfg = apply_overrides(TrainConfig(), {"optim.lr": 3e-4, "max_steps": 123, "data.flip": "false",
                                          "student.scheme": "1", "run.out_dir": "x/y"})
    assert cfg.optim.lr == 3e-4 and cfg.optim.max_steps == 123 and cfg.data.flip is False
    path = tmp_path / "train.yaml"
    cfg.save(path)
    again = load_train_config(path)
    assert again == cfg
    assert TrainConfig() != cfg  # the defaults were not mutated
    over = load_train_config(path, parse_set_args(["optim.batch_size=4", "seed=5"]))
    assert over.optim.batch_size == 4 and over.run.seed == 5 and over.optim.lr == 3e-4


@pytest.mark.parametrize("values, message", [
    ({"optim.learning_rate": 1}, "optim.learning_rate"),
    ({"nosuch.lr": 1}, "nosuch"),
    ({"colour": 1}, "'colour'"),
    ({"optim.max_steps": "many"}, "optim.max_steps"),
    ({"student.scheme": "2"}, "student.scheme"),
    ({"optim.batch_size": 0}, "optim.batch_size"),
])
def test_config_bad_values_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(TrainConfig(), values)


def test_config_bad_yaml_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 1.0e-4\n  warmup: 10\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*optim.warmup"):
        load_train_config(path)


def test_cli_rejects_unknown_key(capsys):
    from csl_ros.cli import main

    assert main(["train", "student", "--set", "optim.foo=1", "--print-config"]) == 2
    assert "optim.foo" in capsys.readouterr().err
    assert main(["train", "student", "--scheme", "1", "--set", "lr=2e-4", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "scheme: '1'" in out and "lr: 0.0002" in out


# --- data ---------------------------------------------------------------------------------------

def test_step_indices_shard_like_distributed_sampler():
    single = step_indices(10, 3, 4, seed=1)
    ranks = [step_indices(10, 3, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(single)
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    # one epoch = a permutation; the stream is a pure function of (seed, step)
    epoch = [i for s in range(5) for i in step_indices(10, s, 2, seed=1)]
    assert sorted(epoch) == list(range(10))
    assert step_indices(10, 3, 4, seed=1) == single
    assert step_indices(10, 3, 4, seed=2) != single


def test_mask_split_after_augmentation():
    image, labels = toy_frame(3, (96, 160))
    params = AugmentParams(crop=(64, 128), min_scale=1.0, max_scale=1.0, flip=True, color_jitter=False)
    flipped_any = False
    for seed in range(8):
        img_a, lab_a = augment(image, labels, np.random.default_rng(seed), params)
        assert img_a.shape == (64, 128, 3) and lab_a.shape == (64, 128)
        # image and labels went through the same crop / flip: colour = palette[label] everywhere
        assert np.array_equal(img_a, PALETTE[lab_a])
        # the crop is a (possibly mirrored) window of the original labels
        windows = [labels[y:y + 64, x:x + 128] for y in range(33) for x in range(33)]
        direct = any(np.array_equal(lab_a, win) for win in windows)
        mirrored = any(np.array_equal(lab_a[:, ::-1], win) for win in windows)
        assert direct or mirrored
        flipped_any |= mirrored and not direct
        comps, k = split_targets(lab_a, max_masks=50, min_area=20)
        ref, classes = split_label_map(lab_a, min_area=20)
        assert k == len(classes) and np.array_equal(comps, ref)
        for c in range(k):
            values = np.unique(lab_a[comps == c])
            assert len(values) == 1 and values[0] != 255  # one class, never void
            n, _ = cv2.connectedComponents((comps == c).astype(np.uint8), connectivity=8)
            assert n == 2  # background + exactly one connected component
        # every non-void pixel of a kept component size is covered
        assert ((comps >= 0) <= (lab_a != 255)).all()
    assert flipped_any


def test_mask_split_keeps_the_largest_when_too_many():
    labels = np.full((40, 40), 255, np.uint8)
    for i in range(6):
        labels[2:4 + i, 6 * i:6 * i + 4] = 1 + i  # six components of increasing area
    comps, k = split_targets(labels, max_masks=3, min_area=1)
    assert k == 3
    areas = sorted(int((comps == c).sum()) for c in range(k))
    assert areas == sorted(sorted(int((labels == c).sum()) for c in range(1, 7))[-3:])


def test_scale_augmentation_keeps_labels_nearest():
    image, labels = toy_frame(1, (64, 128))
    params = AugmentParams(crop=(64, 128), min_scale=0.5, max_scale=2.0, flip=False, color_jitter=True)
    img_a, lab_a = augment(image, labels, np.random.default_rng(0), params)
    assert set(np.unique(lab_a)) <= set(np.unique(labels)) | {255}   # nearest: no blended labels
    assert img_a.dtype == np.uint8


def test_student_negatives_forward_the_source_road_paint_shadow_and_road_colour_options(tmp_path, monkeypatch):
    """data.negative_exclude_source_road / negative_avoid_road_paint / negative_shadow /
    negative_road_colour_fraction reach paste_negatives."""
    import csl_ros.training.student as student_mod

    seen = []

    def fake_paste(img, lab, sources, gen, count, size_range, *, colour_fraction, exclude_source_road,
                   avoid_road_paint, shadow, colour_saturation, aspect_range, road_colour_fraction):
        seen.append((exclude_source_road, avoid_road_paint, shadow, road_colour_fraction))
        return torch.zeros(lab.shape, dtype=torch.bool)

    monkeypatch.setattr(student_mod, "paste_negatives", fake_paste)
    for exclude, avoid, shadow, road in ((True, False, False, 0.0), (False, True, False, 0.0),
                                         (False, False, True, 0.0), (False, False, False, 0.4)):
        cfg = tiny_config(tmp_path, **{"data.negatives_max": 3, "data.negative_exclude_source_road": exclude,
                                       "data.negative_avoid_road_paint": avoid, "data.negative_shadow": shadow,
                                       "data.negative_road_colour_fraction": road})
        task = StudentTask(cfg, DistEnv(), ToyFrames(), num_queries=50)
        for step in range(8):
            rng = np.random.default_rng([cfg.run.seed, step, 0])
            task.paste_negative_regions(*augment(*ToyFrames()[0], rng, task.params), rng)
        assert seen and set(seen) == {(exclude, avoid, shadow, road)}
        seen.clear()


def test_student_negatives_forward_aspect_and_saturation(tmp_path, monkeypatch):
    """data.negative_{min,max}_aspect and _saturation reach paste_negatives; defaults are the segmenter's;
    min > max is refused naming the pair."""
    import csl_ros.training.student as student_mod
    from csl_ros.training.config import COLOUR_SATURATION, NEGATIVE_ASPECT

    seen = []

    def fake_paste(img, lab, sources, gen, count, size_range, *, colour_saturation, aspect_range, **_):
        seen.append((tuple(colour_saturation), tuple(aspect_range)))
        return torch.zeros(lab.shape, dtype=torch.bool)

    monkeypatch.setattr(student_mod, "paste_negatives", fake_paste)
    for extra, want in (({}, (COLOUR_SATURATION, NEGATIVE_ASPECT)),
                        ({"data.negative_min_aspect": 1.0, "data.negative_max_aspect": 6.0,
                          "data.negative_min_saturation": 0.0, "data.negative_max_saturation": 0.5},
                         ((0.0, 0.5), (1.0, 6.0)))):
        cfg = tiny_config(tmp_path, **{"data.negatives_max": 3, **extra})
        task = StudentTask(cfg, DistEnv(), ToyFrames(), num_queries=50)
        for step in range(8):
            rng = np.random.default_rng([cfg.run.seed, step, 0])
            task.paste_negative_regions(*augment(*ToyFrames()[0], rng, task.params), rng)
        assert seen and set(seen) == {want}
        seen.clear()
    for what, lo, hi in (("aspect", 3.0, 2.0), ("saturation", 0.8, 0.2)):
        with pytest.raises(ValueError, match=f"negative_min_{what}"):
            tiny_config(tmp_path, **{f"data.negative_min_{what}": lo, f"data.negative_max_{what}": hi}).validate()


def test_pasted_negatives_are_regions_of_their_own(tmp_path):
    """data.negatives_max: each pasted negative is a mask-split target of its own (not merged into the
    road it stands on); the rest of the crop keeps its targets; off (0) the sample is unchanged."""
    from csl_ros.training.config import NEGATIVE_TRAIN_ID

    base = StudentTask(tiny_config(tmp_path), DistEnv(), ToyFrames(), num_queries=50)
    cfg = tiny_config(tmp_path, **{"data.negatives_max": 3, "data.negative_colour_fraction": 1.0,
                                   "data.negative_min_size": 0.15, "data.negative_max_size": 0.3,
                                   "data.min_component_area": 4})
    task = StudentTask(cfg, DistEnv(), ToyFrames(), num_queries=50)
    found = False
    for step in range(6):
        rng = np.random.default_rng([cfg.run.seed, step, 0])
        image, labels = augment(*ToyFrames()[0], rng, task.params)
        img_n, lab_n = task.paste_negative_regions(image, labels, rng)
        pasted = lab_n == NEGATIVE_TRAIN_ID
        if not pasted.any():
            continue
        found = True
        assert (image[~pasted] == img_n[~pasted]).all() and (labels[~pasted] == lab_n[~pasted]).all()
        comps, k = split_targets(lab_n, 50, min_area=4)
        n, cc = cv2.connectedComponents(pasted.astype(np.uint8), connectivity=8)
        for c in range(1, n):
            blob = cc == c
            if blob.sum() < 4:
                continue
            ids = np.unique(comps[blob])
            assert len(ids) == 1 and ids[0] >= 0, "one negative, one target"
            assert (comps == ids[0]).sum() == blob.sum(), "the target is the negative alone"
        # the same sample without negatives: the toy frames' own targets, unchanged
        rng0 = np.random.default_rng([cfg.run.seed, step, 0])
        ref = base.sample(step, 0, 0)
        assert np.array_equal(ref[0], augment(*ToyFrames()[0], rng0, base.params)[0])
    assert found, "no negative was pasted in six samples"


# --- losses and training ------------------------------------------------------------------------

def test_loss_matches_criterion_in_one_process(tmp_path):
    cfg = tiny_config(tmp_path)
    task = StudentTask(cfg, DistEnv(), ToyFrames(), num_queries=50)
    batch = task.make_batch(0)
    assert batch.images.shape == (2, 3, 64, 128) and batch.images.dtype == torch.uint8
    assert all(k > 0 for k in batch.counts)
    from csl_ros.model import build_student, get_preset, masks_from_components

    model = build_student(get_preset("r18_fast", distill_channels=0)).train()
    torch.manual_seed(0)
    total, logs = task.loss(model, batch)
    torch.manual_seed(0)
    ref = task.criterion(model(batch.images.float()),
                         [masks_from_components(batch.components[b], batch.counts[b]) for b in range(2)])
    assert torch.allclose(total, ref["loss"], rtol=1e-5)
    assert set(logs) == {"validity", "bce", "dice", "num_masks"}
    # batches are pure functions of (seed, step, rank)
    again = task.make_batch(0)
    assert torch.equal(again.images, batch.images) and torch.equal(again.components, batch.components)
    assert not torch.equal(task.make_batch(1).images, batch.images)


def test_scheme1_distills_a_frozen_teacher(tmp_path):
    from csl_ros.teachers.calibration import Calibration
    from csl_ros.teachers.segmenter import ClosedSetSegmenter, SegmenterConfig
    from csl_ros.teachers.teacher import Teacher

    torch.manual_seed(0)
    seg = ClosedSetSegmenter(SegmenterConfig(arch="fpn_resnet18"))
    teacher = Teacher("msp", seg, "msp", Calibration("identity"))
    before = {k: v.clone() for k, v in seg.state_dict().items()}
    cfg = tiny_config(tmp_path, **{"student.scheme": "1", "optim.max_steps": 1})
    summary, trainer = train_student(cfg, DistEnv(), dataset=ToyFrames(), resume=False, teacher=teacher)
    assert trainer.model.has_distribution
    assert not seg.training  # eval mode, BN statistics untouched
    assert all(torch.equal(before[k], v) for k, v in seg.state_dict().items())
    assert all(p.grad is None for p in seg.parameters())
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert "distill=" in rows[-1]["extra"]
    from csl_ros.model import load_checkpoint

    loaded = load_checkpoint(tmp_path / "student.safetensors")
    assert loaded.config.distill_channels == 1 and loaded.metadata["scheme"] == "1"


def test_export_writes_a_compact_student_that_loads(tmp_path):
    from csl_ros.model import load_checkpoint
    from csl_ros.training.student import export_student

    cfg = tiny_config(tmp_path, **{"student.preset": "r18_lite", "optim.max_steps": 1})
    train_student(cfg, DistEnv(), dataset=ToyFrames(), resume=False)
    src = tmp_path / "student.safetensors"
    digest = export_student(src, tmp_path / "small.safetensors", "int8", {"train_steps": 1})
    small = load_checkpoint(tmp_path / "small.safetensors")
    assert small.sha256 == digest and small.metadata["stored_dtype"] == "int8"
    assert small.metadata["train_steps"] == "1" and small.metadata["scheme"] == "ca"
    assert small.config == load_checkpoint(src).config
    assert (tmp_path / "small.safetensors").stat().st_size < 0.3 * src.stat().st_size


def test_resume_gives_the_same_next_step(tmp_path):
    straight, _ = train_student(tiny_config(tmp_path / "a"), DistEnv(), dataset=ToyFrames(), resume=False)
    cfg_b = tiny_config(tmp_path / "b")
    first, _ = train_student(cfg_b, DistEnv(), dataset=ToyFrames(), resume=False, stop_at_step=2)
    assert first.final_step == 2 and (tmp_path / "b" / "last.pt").is_file()
    assert not (tmp_path / "b" / "student.safetensors").exists()
    second, trainer_b = train_student(cfg_b, DistEnv(), dataset=ToyFrames(), resume=True)
    assert second.steps_run == 1 and second.final_step == 3
    assert [s for s, _ in straight.losses] == [1, 2, 3]
    assert abs(second.losses[0][1] - straight.losses[2][1]) < 1e-6
    assert abs(first.losses[1][1] - straight.losses[1][1]) < 1e-6
    from csl_ros.model import read_checkpoint

    _, state_a, _ = read_checkpoint(tmp_path / "a" / "student.safetensors")
    _, state_b, _ = read_checkpoint(tmp_path / "b" / "student.safetensors")
    for k in state_a:
        assert torch.allclose(state_a[k].float(), state_b[k].float(), atol=1e-6), k
    # the checkpoint loads with weights_only=True and records the optimiser / schedule state
    ckpt = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and "optimizer" in ckpt and "scheduler" in ckpt
    # ...and the SHA-256 of its weights: a modified resume checkpoint is refused, naming the file
    next(iter(ckpt["model"].values())).view(-1)[0] += 1.0
    torch.save(ckpt, tmp_path / "b" / "last.pt")
    with pytest.raises(ValueError, match=r"last\.pt: the weights do not match the SHA-256"):
        train_student(cfg_b, DistEnv(), dataset=ToyFrames(), resume=True)


def test_resume_refuses_another_run(tmp_path):
    train_student(tiny_config(tmp_path, **{"optim.max_steps": 1}), DistEnv(), dataset=ToyFrames(), resume=False)
    cfg = tiny_config(tmp_path, **{"student.preset": "r50_paper", "optim.max_steps": 1})
    with pytest.raises(ValueError, match="last.pt"):
        from csl_ros.training.loop import Trainer  # noqa: F401
        train_student(cfg, DistEnv(), dataset=ToyFrames(), resume=tmp_path / "last.pt")


def test_resume_refuses_another_schedule_length(tmp_path):
    """Without warm-up the poly schedule stores its horizon: a resume with more steps would train at
    lr 0 past the old end; it is refused, saying why."""
    train_student(tiny_config(tmp_path, **{"optim.max_steps": 2}), DistEnv(), dataset=ToyFrames(), resume=False)
    longer = tiny_config(tmp_path, **{"optim.max_steps": 4})
    with pytest.raises(ValueError, match=r"last\.pt: its learning-rate schedule ends at step 2, this run's at 4"):
        train_student(longer, DistEnv(), dataset=ToyFrames(), resume=True)
    # the same horizon resumes (nothing left to do)
    again, _ = train_student(tiny_config(tmp_path, **{"optim.max_steps": 2}), DistEnv(), dataset=ToyFrames(),
                             resume=True)
    assert again.steps_run == 0 and again.final_step == 2


def write_cityscapes(root: Path, n: int = 4, size=(64, 128)) -> None:
    for i in range(n):
        image, labels = toy_frame(i, size)
        city = "toy"
        img_dir, gt_dir = root / "leftImg8bit" / "train" / city, root / "gtFine" / "train" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        fid = f"{city}_{i:06d}_000019"
        cv2.imwrite(str(img_dir / f"{fid}_leftImg8bit.png"), image[..., ::-1])
        cv2.imwrite(str(gt_dir / f"{fid}_gtFine_labelTrainIds.png"), labels)


def test_cityscapes_source(tmp_path):
    from csl_ros.training.datasets import CityscapesFrames

    write_cityscapes(tmp_path, n=2)
    ds = CityscapesFrames(tmp_path, "train")
    assert len(ds) == 2
    image, labels = ds[1]
    ref_image, ref_labels = toy_frame(1)
    assert np.array_equal(image, ref_image) and np.array_equal(labels, ref_labels)


@pytest.mark.slow
def test_torchrun_two_process_gloo_loss_decreases(tmp_path):
    write_cityscapes(tmp_path / "cs", n=4)
    out = tmp_path / "run"
    import socket

    with socket.socket() as sock:  # a free port for the rendezvous (port 0 is not shared with workers)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "csl_ros", "train", "student",
           "--scheme", "ca", "--out", str(out), "--set", "data.dataset=cityscapes",
           "--set", f"data.root={tmp_path / 'cs'}", "--set", "student.preset=r18_fast",
           "--set", "data.crop_height=64", "--set", "data.crop_width=128", "--set", "data.min_scale=1.0",
           "--set", "data.max_scale=1.0", "--set", "data.color_jitter=false", "--set", "optim.batch_size=4",
           "--set", "optim.max_steps=10", "--set", "optim.lr=1e-3", "--set", "student.num_points=512",
           "--set", "run.log_every=1", "--set", "run.device=cpu", "--set", "run.progress=false",
           "--set", "run.threads=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 10
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    import json

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["final_step"] == 10
    assert (out / "student.safetensors").is_file()


def test_train_segmenter_cli_delegates_to_the_teachers_loop(tmp_path):
    from csl_ros.cli import main
    from csl_ros.teachers.segmenter import load_segmenter

    out, export = tmp_path / "seg", tmp_path / "exported.safetensors"
    code = main(["train", "segmenter", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 "--set", "preset=fpn_resnet18", "--set", "frames=2", "--set", "render_size=64x128",
                 "--set", "crop_size=64x128", "--set", "steps=1", "--set", "batch_size=1",
                 "--set", "progress=false", "--set", "device=cpu", "--export", str(export)])
    assert code == 0
    assert len(list((tmp_path / "cache" / "64x128").glob("*_trainIds.png"))) == 2  # shared frame cache
    assert load_segmenter(export).config.arch == "fpn_resnet18"
    assert main(["train", "segmenter", "--set", "stepz=1", "--print-config"]) == 2
