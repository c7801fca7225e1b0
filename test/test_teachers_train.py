"""Teachers: segmenter training loop (loss decreases, exact resume), fit-stats CLI."""
import argparse
import csv
import json

import numpy as np
import pytest
import torch

from csl_ros.teachers import cli as teacher_cli
from csl_ros.teachers.segmenter import ClosedSetSegmenter, load_segmenter, preset, save_segmenter
from csl_ros.training.segmenter import SegmenterTrainConfig, augment, evaluate_miou, train_segmenter
from csl_ros.teachers.stats import TeacherStats, file_sha256
from csl_ros.teachers.teacher import build_teacher

torch.set_num_threads(2)

COLOURS = np.array([[128, 64, 128], [244, 35, 232], [70, 70, 70], [107, 142, 35], [70, 130, 180]],
                   np.uint8)


class ToyScenes:
    """Frames of horizontal colour bands (sky/building/vegetation/sidewalk/road order shuffled
    per frame), label = band class; a colour→class task a segmenter learns in a few steps."""

    def __init__(self, n=4, size=(64, 128)):
        self.items = []
        rng = np.random.default_rng(0)
        h, w = size
        for _ in range(n):
            order = rng.permutation(5)
            bounds = np.sort(rng.choice(np.arange(8, h - 8), 4, replace=False))
            lab = np.zeros((h, w), np.uint8)
            edges = [0, *bounds, h]
            for b, c in enumerate(order):
                lab[edges[b]:edges[b + 1]] = c
            img = COLOURS[lab].astype(np.int16) + rng.integers(-12, 13, (h, w, 3))
            lab[:, :3] = 255  # a void strip
            self.items.append((np.clip(img, 0, 255).astype(np.uint8), lab))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _cfg(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), preset="lraspp_mobilenet_v3_large", render_size=(64, 128),
                crop_size=(64, 128), scale_range=(0.9, 1.1), steps=20, batch_size=2, lr=2e-3,
                warmup_steps=0, log_every=5, checkpoint_every=10, progress=False, save_dtype="float32")
    base.update(kw)
    return SegmenterTrainConfig(**base)


def test_augment_keeps_image_label_alignment_and_void():
    img, lab = ToyScenes(1)[0]
    cfg = SegmenterTrainConfig(crop_size=(48, 96), scale_range=(0.5, 2.0), color_jitter=0.0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        x, y = augment(img, lab, cfg, gen)
        assert x.shape == (3, 48, 96) and y.shape == (48, 96)
        assert set(torch.unique(y).tolist()) <= {0, 1, 2, 3, 4, 255}
        # every labelled pixel still has (close to) its class colour: geometry moved both alike
        keep = y != 255
        colours = torch.from_numpy(COLOURS).float() / 255
        err = (x.permute(1, 2, 0)[keep] - colours[y[keep]]).abs().amax(1)
        assert float((err < 0.2).float().mean()) > 0.9


@pytest.mark.slow
def test_loss_decreases_on_synthroad_and_log_checkpoint_segmenter_written(tmp_path):
    # the default dataset: two synthroad frames without obstacles, rendered at 64×128
    cfg = _cfg(tmp_path, first_seed=0, frames=2, val_frames=2, val_first_seed=1_000_000)
    res = train_segmenter(cfg)
    losses = [v for _, v in res.losses]
    assert len(losses) == 20
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    rows = list(csv.DictReader(open(res.log_path)))
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    model = load_segmenter(res.segmenter_path)
    assert model.config.arch == "lraspp_mobilenet_v3_large"
    assert 0 <= res.miou <= 1 and len(res.per_class_iou) == 19
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["miou"] == pytest.approx(res.miou)


def test_evaluate_miou_by_hand():
    class Fixed(torch.nn.Module):  # predicts class 0 on the left half, class 1 on the right
        num_classes = 3

        def forward(self, x):
            z = torch.zeros(x.shape[0], 3, *x.shape[-2:])
            z[:, 0, :, : x.shape[-1] // 2] = 1
            z[:, 1, :, x.shape[-1] // 2:] = 1
            return z

    lab = np.zeros((2, 4), np.uint8)
    lab[:, 3] = 1
    lab[0, 0] = 255
    data = [(np.zeros((2, 4, 3), np.uint8), lab)]
    miou, iou = evaluate_miou(Fixed(), data)
    # class 0: tp 3 (cols 0-1 minus the void), pred 3, gt 5 → 3/5; class 1: tp 2, pred 4, gt 2 → 2/4
    assert iou[0] == pytest.approx(3 / 5) and iou[1] == pytest.approx(0.5) and np.isnan(iou[2])
    assert miou == pytest.approx((3 / 5 + 0.5) / 2)


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    data = ToyScenes()
    kw = dict(steps=4, checkpoint_every=2)
    straight = train_segmenter(_cfg(tmp_path / "a", **kw), dataset=data)
    first = train_segmenter(_cfg(tmp_path / "b", **kw), dataset=data, stop_at_step=2)  # interrupted
    assert [s for s, _ in first.losses] == [0, 1]
    assert torch.load(first.checkpoint_path, weights_only=True)["step"] == 2
    resumed = train_segmenter(_cfg(tmp_path / "b", **kw), dataset=data)
    assert [s for s, _ in resumed.losses] == [2, 3]
    assert [v for _, v in first.losses + resumed.losses] == pytest.approx([v for _, v in straight.losses],
                                                                          rel=1e-6)
    a = load_segmenter(straight.segmenter_path).state_dict()
    b = load_segmenter(resumed.segmenter_path).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    with pytest.raises(ValueError, match="last.pt.*preset"):
        train_segmenter(_cfg(tmp_path / "b", steps=8, preset="fpn_resnet18", num_classes=5), dataset=data)


def _parser():
    p = argparse.ArgumentParser()
    teacher_cli.register(p.add_subparsers(dest="command"))
    return p


def test_fit_stats_cli_on_an_image_folder(tmp_path):
    import cv2

    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    for i, (img, _) in enumerate(ToyScenes(3, size=(60, 100))):
        cv2.imwrite(str(folder / f"f{i}.png"), img[:, :, ::-1])
    torch.manual_seed(0)
    seg = save_segmenter(ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large")).eval(),
                         tmp_path / "seg.safetensors")
    args = _parser().parse_args(["teacher", "fit-stats", "--segmenter", str(seg), "--data", "images",
                                 "--root", str(tmp_path / "imgs"), "--size", "64x128", "--quiet",
                                 "--reservoir", "5000"])
    assert args.func(args) == 0
    stats = TeacherStats.load(tmp_path / "seg.stats.json")
    assert stats.segmenter_sha256 == file_sha256(seg)
    assert stats.fit_info["images"] == 3 and stats.fit_info["pixels"] == 3 * 64 * 128
    assert stats.fit_info["data"] == "images" and stats.fit_info["size"] == [64, 128]
    assert sum(stats.class_count) == 3 * 64 * 128
    out = build_teacher("sml", seg, device="cpu")(torch.from_numpy(ToyScenes(1)[0][0]).permute(2, 0, 1)[None])
    assert out.score_map.shape == (1, 1, 64, 128)
    bad = _parser().parse_args(["teacher", "fit-stats", "--segmenter", str(seg), "--data", "images",
                                "--root", str(tmp_path / "nothing")])
    with pytest.raises(FileNotFoundError, match="nothing"):
        bad.func(bad)
    with pytest.raises(SystemExit):
        _parser().parse_args(["teacher", "fit-stats", "--segmenter", str(seg), "--data", "images",
                              "--size", "64by128"])


def write_cityscapes_layout(root, scenes) -> None:
    """The (image, trainIds) pairs as a Cityscapes train split under ``root`` (one city)."""
    import cv2

    d_img, d_gt = root / "leftImg8bit" / "train" / "aachen", root / "gtFine" / "train" / "aachen"
    d_img.mkdir(parents=True, exist_ok=True)
    d_gt.mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(scenes):
        cv2.imwrite(str(d_img / f"aachen_{i:06d}_000019_leftImg8bit.png"), img[:, :, ::-1])
        cv2.imwrite(str(d_gt / f"aachen_{i:06d}_000019_gtFine_labelTrainIds.png"), lab)


def test_fit_stats_cli_on_a_cityscapes_layout(tmp_path):
    write_cityscapes_layout(tmp_path / "cs", ToyScenes(2, size=(64, 128)))
    torch.manual_seed(0)
    seg = save_segmenter(ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large")).eval(),
                         tmp_path / "seg.pt")
    out = tmp_path / "stats" / "cs.json"
    args = _parser().parse_args(["teacher", "fit-stats", "--segmenter", str(seg), "--data", "cityscapes",
                                 "--root", str(tmp_path / "cs"), "--size", "32x64", "--quiet",
                                 "--out", str(out), "--calibration", "quantile_linear"])
    assert args.func(args) == 0
    stats = TeacherStats.load(out)
    assert stats.fit_info["data"] == "cityscapes" and stats.fit_info["images"] == 2
    assert stats.calibration["sml"].method == "quantile_linear"
    missing = _parser().parse_args(["teacher", "fit-stats", "--segmenter", str(seg), "--data",
                                    "cityscapes"])
    with pytest.raises(ValueError, match="--root"):
        missing.func(missing)


def test_fit_stats_cli_on_synthroad(tmp_path):
    torch.manual_seed(0)
    seg = save_segmenter(ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large")).eval(),
                         tmp_path / "seg.safetensors")
    args = _parser().parse_args(["teacher", "fit-stats", "--segmenter", str(seg), "--data", "synthroad",
                                 "--frames", "2", "--first-seed", "5", "--size", "64x128", "--quiet"])
    assert args.func(args) == 0
    stats = TeacherStats.load(tmp_path / "seg.stats.json")
    assert stats.fit_info["seeds"] == [5, 6] and stats.fit_info["obstacles"] == "none"
    assert stats.fit_info["pixels"] == 2 * 64 * 128


def test_rare_paint_frames_follow_the_contiguous_seeds_in_both_synthroad_datasets(tmp_path):
    from csl_ros.data.synthroad import rare_road_paint_seeds, render_frame
    from csl_ros.training.datasets import SynthroadFrames
    from csl_ros.training.segmenter import SynthroadSegmentation

    cfg = SegmenterTrainConfig(first_seed=7, frames=2, rare_paint_frames=2, rare_paint_first_seed=500_000)
    extra = cfg.extra_seeds()
    assert extra == rare_road_paint_seeds(500_000, 2)
    assert SegmenterTrainConfig(frames=2).extra_seeds() == []
    size = (32, 64)
    on_disk = SynthroadFrames(cfg.first_seed, cfg.frames, size, tmp_path, extra_seeds=extra)
    in_memory = SynthroadSegmentation(cfg.first_seed, cfg.frames, size, extra_seeds=extra)
    assert len(on_disk) == len(in_memory) == 4
    assert on_disk.seeds == in_memory.seeds == [7, 8, *extra]
    assert "seeds 7..8 + 2 other seeds" in on_disk.describe()
    assert on_disk.prepare(progress=False) == 4 and on_disk.missing() == []
    want = render_frame(extra[1], size=size, obstacles="none")
    for ds in (on_disk, in_memory):
        image, labels = ds[3]
        assert np.array_equal(image, want.image) and np.array_equal(labels, want.train_ids)
    for ds in (on_disk, in_memory):
        with pytest.raises(IndexError):
            ds[4]
    # the in-memory frames' cache is memory: what was read is not missing, prepare() renders the rest there
    assert in_memory.missing() == [0, 1, 2]
    assert in_memory.prepare(progress=False) == 3 and in_memory.missing() == []
    # the student's data config draws the same seeds
    from csl_ros.training.config import DataConfig
    from csl_ros.training.datasets import build_dataset

    student = build_dataset(DataConfig(synth_seed=7, synth_frames=2, synth_height=32, synth_width=64,
                                       root=str(tmp_path), rare_paint_frames=2))
    assert student.seeds == [7, 8, *extra] and student.missing() == []


def test_segmenter_data_follow_the_configured_dataset(tmp_path):
    """train_segmenter given no frames reads the configured dataset (not synthroad whatever it names),
    its validation split included; synthroad on disk and in memory draw the same seeds."""
    from csl_ros.training.datasets import RecordFrames, SynthroadFrames
    from csl_ros.training.segmenter import SynthroadSegmentation, segmenter_frames

    scenes = list(ToyScenes(2, size=(64, 128)))
    write_cityscapes_layout(tmp_path / "cs", scenes)
    cfg = SegmenterTrainConfig(dataset="cityscapes", root=str(tmp_path / "cs"), val_split="train",
                               out_dir=str(tmp_path / "run"), crop_size=(32, 64), steps=1, batch_size=1,
                               warmup_steps=0, progress=False, save_dtype="float32")
    for in_memory in (False, True):
        train, val = (segmenter_frames(cfg, in_memory=in_memory, validation=v) for v in (False, True))
        assert isinstance(train, RecordFrames) and isinstance(val, RecordFrames) and len(train) == len(val) == 2
        assert np.array_equal(train[1][1], scenes[1][1])
    result = train_segmenter(cfg)
    assert result.miou is not None
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_frames"] == 2
    with pytest.raises(ValueError, match="dataset cityscapes needs root"):
        SegmenterTrainConfig(dataset="cityscapes").validate()
    syn = SegmenterTrainConfig(frames=2, val_frames=1, render_size=(32, 64))
    disk, disk_val = (segmenter_frames(syn, tmp_path / "cache", validation=v) for v in (False, True))
    mem, mem_val = (segmenter_frames(syn, in_memory=True, validation=v) for v in (False, True))
    assert isinstance(disk, SynthroadFrames) and isinstance(mem, SynthroadSegmentation)
    assert disk.seeds == mem.seeds and disk_val.seeds == mem_val.seeds == [syn.val_first_seed]
    assert segmenter_frames(SegmenterTrainConfig(val_frames=0), in_memory=True, validation=True) is None
    assert segmenter_frames(SegmenterTrainConfig(dataset="cityscapes", root=cfg.root), validation=True) is None
