"""The registries at the extension points: a toy teacher, a toy backbone and a toy dataset, each
registered from this file and used end to end (configuration, CLI, detector, training, bags)."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from csl_ros.config import TEACHERS, DetectorConfig, apply_overrides
from csl_ros.data.registry import DATASETS
from csl_ros.model.backbone import BACKBONES
from csl_ros.registry import Registry
from csl_ros.teachers.registry import TEACHERS as TEACHER_REGISTRY


# --- the generic registry ----------------------------------------------------------------------------
def test_registry_registers_lazily_and_names_errors():
    reg = Registry("widget", colour="grey")
    reg.register("json_dumps", "json:dumps", colour="red")

    @reg.register("double")
    def double(x):
        return 2 * x

    assert list(reg) == ["json_dumps", "double"] and "double" in reg and len(reg) == 2
    assert reg.get("json_dumps")({"a": 1}) == '{"a": 1}' and reg.get("double")(4) == 8
    assert reg.entry("double").colour == "grey" and reg.names(colour="red") == ("json_dumps",)
    view = reg.choices(before=("none",))
    assert tuple(view) == ("none", "json_dumps", "double")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("double", double)
    with pytest.raises(ValueError, match="unknown widget registration field.*shape"):
        reg.register("other", double, shape="round")
    with pytest.raises(ValueError, match="unknown widget 'triple'; choose one of json_dumps, double"):
        reg.get("triple")
    reg.register("broken", "json:no_such_function")
    with pytest.raises(ImportError, match="json:no_such_function"):
        reg.get("broken")
    reg.unregister("double")
    assert tuple(view) == ("none", "json_dumps", "broken")  # views follow the registry


def test_lists_of_names_are_views_of_the_registries():
    from bench.results import TEACHERS as BENCH_TEACHERS
    from csl_ros.data.loaders import DATASETS as LOADER_DATASETS
    from csl_ros.eval.bag_cli import BAG_DATASETS
    from csl_ros.model.config import BACKBONES as CONFIG_BACKBONES
    from csl_ros.teachers.scores import SCORE_FUNCTIONS
    from csl_ros.teachers.teacher import TEACHER_NAMES
    from csl_ros.training.config import DATASETS as TRAIN_DATASETS
    from csl_ros.training.config import TEACHER_SCORES

    names = tuple(TEACHER_REGISTRY)
    assert names == ("msp", "maxlogit", "sml", "entropy", "energy")
    assert tuple(TEACHERS) == ("none", *names, "onnx") and tuple(TEACHER_NAMES) == (*names, "onnx")
    assert tuple(SCORE_FUNCTIONS) == tuple(TEACHER_SCORES) == BENCH_TEACHERS == names
    assert TEACHER_REGISTRY.names(bounded=False) == ("maxlogit", "sml", "energy")
    assert tuple(CONFIG_BACKBONES) == tuple(BACKBONES) == ("resnet18", "resnet34", "resnet50", "resnet101")
    assert tuple(LOADER_DATASETS) == tuple(DATASETS)
    assert "cityscapes" not in BAG_DATASETS and "laf" in BAG_DATASETS
    assert tuple(TRAIN_DATASETS) == ("cityscapes", "synthroad")


# --- a toy teacher -----------------------------------------------------------------------------------
def top2_margin_score(logits: torch.Tensor) -> torch.Tensor:
    """1 − (p_top1 − p_top2): high where the two best classes are close. In [0, 1]."""
    top = torch.softmax(logits.float(), dim=1).topk(2, dim=1).values
    return 1.0 - (top[:, :1] - top[:, 1:2])


@pytest.fixture
def toy_teacher():
    TEACHER_REGISTRY.register("top2_margin", top2_margin_score, bounded=True, calibration="identity",
                              help="1 - softmax margin of the two best classes")
    yield "top2_margin"
    TEACHER_REGISTRY.unregister("top2_margin")


def test_toy_teacher_end_to_end(toy_teacher, tiny_model_files, tmp_path):
    import json

    from csl_ros.cli import main
    from csl_ros.teachers.scores import compute_score
    from csl_ros.teachers.stats import StatsAccumulator
    from csl_ros.teachers.teacher import build_teacher

    assert toy_teacher in TEACHERS and toy_teacher in DetectorConfig.__dataclass_fields__["teacher"].metadata["choices"]
    cfg = apply_overrides(DetectorConfig(), {"teacher": toy_teacher})
    assert cfg.teacher == toy_teacher
    with pytest.raises(ValueError, match="teacher='no_such' is not one of none, msp.*top2_margin, onnx"):
        apply_overrides(DetectorConfig(), {"teacher": "no_such"})

    # the teacher itself: the registered function, identity calibration (bounded), no stats needed
    seg_path = tiny_model_files[1].split("=", 1)[1]
    teacher = build_teacher(toy_teacher, segmenter_path=seg_path, device="cpu")
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    out = teacher(images)
    torch.testing.assert_close(out.raw_score, top2_margin_score(out.logits))
    torch.testing.assert_close(out.score_map, out.raw_score)
    torch.testing.assert_close(compute_score(toy_teacher, out.logits), out.raw_score)

    # fit-stats streams it with the built-in scores and stores its default calibration
    acc = StatsAccumulator(out.logits.shape[1], reservoir_size=500)
    acc.update_logits(out.logits)
    stats = acc.finalize()
    assert stats.calibration[toy_teacher].method == "identity"
    assert 0.0 <= stats.quantiles[toy_teacher][0.5] <= 1.0

    # and the detector CLI runs with it (teacher_only: the map is the toy score)
    image = np.random.default_rng(2).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), image)
    args = ["detect", str(tmp_path / "frame.png"), "--out", str(tmp_path / "out"),
            "--set", f"teacher={toy_teacher}", "--set", "scheme=teacher_only", "--set", "device=cpu",
            "--set", "backend=eager", "--set", "input_height=64", "--set", "input_width=128"]
    for setting in tiny_model_files:
        args += ["--set", setting]
    assert main(args) == 0
    anomaly = np.load(tmp_path / "out" / "frame_anomaly.npy")
    assert anomaly.shape == (40, 56) and 0.0 <= anomaly.min() and anomaly.max() <= 1.0
    assert json.loads((tmp_path / "out" / "frame_obstacles.json").read_text())


# --- a toy backbone ----------------------------------------------------------------------------------
class TinyTrunk(nn.Module):
    """Four strided convolutions: feature maps at strides 4, 8, 16, 32."""

    out_channels = (8, 16, 16, 32)

    def __init__(self, config=None):
        super().__init__()
        chans = (3,) + self.out_channels
        strides = (4, 2, 2, 2)
        self.stages = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, stride=strides[i], padding=1)
                                    for i in range(4))

    def forward(self, x):
        feats = []
        for stage in self.stages:
            x = torch.relu(stage(x))
            feats.append(x)
        return tuple(feats)


TINY = dict(conv_dim=32, mask_dim=32, hidden_dim=32, num_queries=5, dec_layers=3, nheads=2,
            dim_feedforward=64, gn_groups=8)


@pytest.fixture
def toy_backbone():
    BACKBONES.register("tiny_trunk", TinyTrunk, help="four strided convolutions (test)")
    yield "tiny_trunk"
    BACKBONES.unregister("tiny_trunk")


def test_toy_backbone_end_to_end(toy_backbone, tmp_path):
    from csl_ros.model import CSLStudent, ModelConfig, get_preset, load_checkpoint, save_checkpoint

    config = ModelConfig(backbone=toy_backbone, **TINY)
    torch.manual_seed(0)
    student = CSLStudent(config).eval()
    assert isinstance(student.backbone, TinyTrunk)
    images = torch.randint(0, 256, (1, 3, 64, 96)).float()
    with torch.no_grad():
        out = student(images)
    assert out.region_logits.shape == (1, 5, 16, 24) and out.validity_logits.shape == (1, 5, 2)
    # a checkpoint rebuilds the registered backbone from its config
    save_checkpoint(tmp_path / "tiny.safetensors", student)
    loaded = load_checkpoint(tmp_path / "tiny.safetensors")
    assert loaded.config.backbone == toy_backbone and isinstance(loaded.model.backbone, TinyTrunk)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images).region_logits, out.region_logits)

    # injected instead of the config's builder
    injected = CSLStudent(get_preset("r18_fast"), backbone=TinyTrunk())
    assert isinstance(injected.backbone, TinyTrunk)
    assert injected.pixel_decoder.top[0].in_channels == 32
    with pytest.raises(ValueError, match="out_channels"):
        CSLStudent(config, backbone=nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match="ModelConfig.backbone='no_such'.*tiny_trunk"):
        ModelConfig(backbone="no_such")


# --- a toy dataset -----------------------------------------------------------------------------------
class NpzFolder:
    """Every ``*.npz`` (arrays rgb, label, semantic) of a folder, sorted: one frame each."""

    def __init__(self, root, split="train"):
        from pathlib import Path

        self.files = sorted(Path(root, split).glob("*.npz"))
        if not self.files:
            raise FileNotFoundError(f"no *.npz frames in {Path(root, split)}")
        self.frame_ids = [p.stem for p in self.files]

    def __len__(self):
        return len(self.files)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i):
        from csl_ros.data.loaders import Record

        data = np.load(self.files[i])
        return Record(self.frame_ids[i], data["rgb"], data["label"], semantic=data["semantic"])


@pytest.fixture
def toy_dataset(tmp_path):
    DATASETS.register("npz-folder", NpzFolder, options=("split",), semantic=True,
                      help="frames stored as .npz (test)")
    root = tmp_path / "npz"
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(3):
        semantic = np.zeros((64, 128), np.uint8)
        semantic[32:] = 0   # road below
        semantic[:32] = 10  # sky above
        label = np.where(semantic == 0, 0, 255).astype(np.uint8)
        label[40:48, 60:70] = 1
        rgb = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
        np.savez(root / "train" / f"frame_{i}.npz", rgb=rgb, label=label, semantic=semantic)
    yield "npz-folder", root
    DATASETS.unregister("npz-folder")


def test_toy_dataset_end_to_end(toy_dataset, tiny_model_files, tmp_path):
    pytest.importorskip("rosbags")
    from csl_ros.cli import main
    from csl_ros.data.loaders import open_dataset
    from csl_ros.eval.bag import read_bag
    from csl_ros.training.config import TrainConfig
    from csl_ros.training.config import apply_overrides as train_overrides
    from csl_ros.training.datasets import build_dataset

    name, root = toy_dataset
    records = list(open_dataset(name, root))
    assert [r.frame_id for r in records] == ["frame_0", "frame_1", "frame_2"]

    # bag convert offers it and writes its frames and labels
    bag = tmp_path / "bag"
    assert main(["bag", "convert", "--dataset", name, "--root", str(root), "--out", str(bag),
                 "--split", "train", "--quiet"]) == 0
    frames = list(read_bag(bag))
    assert [f.frame_id for f in frames] == ["frame_0", "frame_1", "frame_2"]
    for rec, fr in zip(records, frames):
        np.testing.assert_array_equal(fr.image, rec.rgb)
        np.testing.assert_array_equal(fr.labels, rec.label)

    # the training config accepts it, and the training source gives (image, trainIds) pairs
    cfg = train_overrides(TrainConfig(), {"data.dataset": name, "data.root": str(root)})
    source = build_dataset(cfg.data)
    image, semantic = source[1]
    np.testing.assert_array_equal(image, records[1].rgb)
    np.testing.assert_array_equal(semantic, records[1].semantic)
    assert "frames stored as .npz" in source.describe()
    with pytest.raises(ValueError, match="data.root"):
        train_overrides(TrainConfig(), {"data.dataset": name})

    # a student trains a step on it
    from csl_ros.training.distributed import DistEnv
    from csl_ros.training.student import train_student

    torch.manual_seed(0)
    run = train_overrides(cfg, {"student.preset": "r18_fast", "data.crop_height": 64, "data.crop_width": 128,
                                "data.min_scale": 1.0, "data.max_scale": 1.0, "optim.batch_size": 2,
                                "optim.max_steps": 1, "student.num_points": 256, "run.device": "cpu",
                                "run.out_dir": str(tmp_path / "run"), "run.progress": False,
                                "run.checkpoint_every": 1000})
    summary, _ = train_student(run, DistEnv())
    assert np.isfinite(float(summary.last_loss)) and (tmp_path / "run" / "student.safetensors").is_file()

    # teacher statistics fitted on it
    seg_path = tiny_model_files[1].split("=", 1)[1]
    out = tmp_path / "seg.stats.json"
    assert main(["teacher", "fit-stats", "--segmenter", seg_path, "--data", name, "--root", str(root),
                 "--size", "64x128", "--device", "cpu", "--out", str(out), "--quiet",
                 "--reservoir", "1000"]) == 0
    from csl_ros.teachers.stats import TeacherStats

    stats = TeacherStats.load(out)
    assert stats.fit_info["data"] == name and stats.fit_info["images"] == 3


def test_unknown_dataset_choice_is_refused(capsys):
    from csl_ros.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bag", "convert", "--dataset", "kitti", "--out", "x"])
    assert exit_info.value.code == 2 and "invalid choice: 'kitti'" in capsys.readouterr().err
    assert dataclasses.fields(DetectorConfig)  # the schema stays importable with the registries
