"""``csl-ros models``: import + verify round trip, tampering, pickled weights converted, no network."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from csl_ros.cli import main

pytest.importorskip("transformers")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CSL_ROS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _copy_without_record(src, dst):
    shutil.copytree(src, dst)
    (dst / "csl_ros.sha256.json").unlink()
    return dst


def test_import_verify_round_trip_and_tampered_file_refused(tiny_hf_models, tmp_path, home, capsys):
    from csl_ros.teachers.hf import load_hf_segmenter

    d = _copy_without_record(tiny_hf_models["mask2former"], tmp_path / "m2f-copy")
    assert main(["models", "import", str(d), "--name", "car-m2f"]) == 0
    out = capsys.readouterr().out
    assert "imported" in out and "model.safetensors" in out
    assert main(["models", "verify"]) == 0
    assert "ok      car-m2f" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert "car-m2f" in listed and "mask2former-swin-large-semantic" in listed and "mIoU" in listed
    load_hf_segmenter(d)  # loads once verified
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert main(["models", "verify", "car-m2f"]) == 1
    err = capsys.readouterr().err
    assert "FAILED  car-m2f" in err and "model.safetensors: SHA-256 differs" in err
    with pytest.raises(ValueError, match="model.safetensors: SHA-256 differs"):
        load_hf_segmenter(d)


def test_import_converts_pickled_weights_without_executing_them(tiny_hf_models, tmp_path, home, capsys):
    import torch
    from transformers import SegformerForSemanticSegmentation

    from csl_ros.teachers.hf import load_hf_segmenter

    src = tiny_hf_models["segformer"]
    d = tmp_path / "bin-only"
    model = SegformerForSemanticSegmentation.from_pretrained(str(src)).eval()
    model.save_pretrained(d, safe_serialization=False)
    shutil.copy(src / "preprocessor_config.json", d)
    for f in d.glob("*.safetensors"):
        f.unlink()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    assert main(["models", "import", str(d)]) == 0
    loaded = load_hf_segmenter(d)
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    assert torch.allclose(loaded(x), load_hf_segmenter(src)(x), atol=1e-6)


def test_import_of_a_folder_without_processor_config_is_one_error(tiny_hf_models, tmp_path, home, capsys):
    d = _copy_without_record(tiny_hf_models["segformer"], tmp_path / "noproc")
    (d / "preprocessor_config.json").unlink()
    assert main(["models", "import", str(d)]) == 2
    assert "no preprocessor_config.json" in capsys.readouterr().err


def test_fetch_without_network_fails_with_one_clear_line(tmp_path):
    env = dict(os.environ, CSL_ROS_HOME=str(tmp_path / "home"), HF_HUB_CACHE=str(tmp_path / "hf"),
               HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run([sys.executable, "-m", "csl_ros.cli", "models", "fetch", "segformer-b0", "--quiet"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot fetch nvidia/segformer-b0-finetuned-cityscapes-1024-1024" in lines[0]
    assert "models import DIR" in lines[0]


@pytest.fixture(scope="module")
def cityscapes_tree(tmp_path_factory):
    """The synthroad writer's Cityscapes layout (train split, 3 frames at 64×128)."""
    root = tmp_path_factory.mktemp("cityscapes")
    assert main(["synth", "--layout", "cityscapes", "--split", "train", "--frames", "3", "--size", "64x128",
                 "--out", str(root)]) == 0
    return root


def test_fit_stats_of_an_hf_teacher_on_cityscapes(tiny_hf_models, cityscapes_tree, tmp_path):
    import numpy as np
    import torch

    from csl_ros.teachers.stats import TeacherStats
    from csl_ros.teachers.teacher import build_teacher

    d = tmp_path / "seg"
    shutil.copytree(tiny_hf_models["segformer"], d)
    assert main(["teacher", "fit-stats", "--segmenter", str(d), "--data", "cityscapes", "--root",
                 str(cityscapes_tree), "--size", "64x128", "--quiet"]) == 0
    stats = TeacherStats.load(d / "csl_ros.stats.json")
    assert stats.num_classes == 5 and stats.fit_info["data"] == "cityscapes"
    assert stats.fit_info["frames"] == 3 and stats.has_class_stats
    teacher = build_teacher("sml", segmenter_path=d, device="cpu")  # statistics found and verified
    x = torch.from_numpy(np.zeros((64, 128, 3), np.uint8)).permute(2, 0, 1)[None]
    assert teacher(x).score_map.shape == (1, 1, 64, 128)
    # statistics of another model are refused
    other = tmp_path / "other"
    shutil.copytree(tiny_hf_models["mask2former"], other)
    shutil.copy(d / "csl_ros.stats.json", other / "csl_ros.stats.json")
    with pytest.raises(ValueError, match="fitted for another model|statistics are for"):
        build_teacher("sml", segmenter_path=other, device="cpu")


@pytest.mark.slow
def test_train_segmenter_on_cityscapes_layout(cityscapes_tree, tmp_path, capsys):
    """`csl-ros train segmenter --data cityscapes --root` (the one trainer) on the synthroad writer's
    Cityscapes layout: a few steps, loss decreasing, then fit-stats on the same tree."""
    import csv
    import json

    import numpy as np

    out = tmp_path / "run"
    argv = ["train", "segmenter", "--data", "cityscapes", "--root", str(cityscapes_tree), "--out", str(out),
            "--set", "crop_size=64x128", "--set", "scale_range=0.9,1.1", "--set", "steps=20",
            "--set", "batch_size=2", "--set", "lr=2e-3", "--set", "warmup_steps=0", "--set", "log_every=1",
            "--set", "progress=false", "--set", "save_dtype=float32", "--set", "val_split=train"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv"))]
    assert len(losses) == 20 and np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert summary["miou"] is not None
    seg = summary["segmenter"]
    assert main(["teacher", "fit-stats", "--segmenter", seg, "--data", "cityscapes", "--root",
                 str(cityscapes_tree), "--size", "64x128", "--quiet"]) == 0
    assert Path(seg).with_name(Path(seg).stem + ".stats.json").is_file()
    with pytest.raises(SystemExit):
        main(["train", "segmenter", "--data", "imagenet"])
    assert main(["train", "segmenter", "--data", "cityscapes", "--out", str(tmp_path / "x")]) == 2
    assert "dataset cityscapes needs root" in capsys.readouterr().err
