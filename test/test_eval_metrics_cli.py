"""``csl-ros metrics`` on folders of score maps and label PNGs."""
import argparse
import json

import cv2
import numpy as np
import pytest

from csl_ros.eval import metrics as M
from csl_ros.eval import metrics_cli


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    metrics_cli.register(sub)
    return parser.parse_args(["metrics", *argv])


def make_frames(rng, n=4, h=40, w=60):
    out = []
    for i in range(n):
        lab = np.zeros((h, w), np.uint8)
        lab[:5] = 255
        y, x = rng.integers(8, h - 12), rng.integers(0, w - 12)
        lab[y:y + 8, x:x + 10] = 1
        s = (rng.random((h, w)) * 0.6 + (lab == 1) * 0.5).astype(np.float32)
        out.append((f"scene_{i:04d}", s, lab))
    return out


def write_smiyc(tmp_path, frames):
    sd, ld = tmp_path / "scores", tmp_path / "labels"
    sd.mkdir()
    ld.mkdir()
    for fid, s, lab in frames:
        np.save(sd / f"{fid}.npy", s)
        cv2.imwrite(str(ld / f"{fid}_labels_semantic.png"), lab)
    return sd, ld


@pytest.mark.parametrize("protocol", ["official", "exact"])
def test_metrics_cli_matches_the_library(tmp_path, protocol, capsys):
    frames = make_frames(np.random.default_rng(0))
    sd, ld = write_smiyc(tmp_path, frames)
    out = tmp_path / "m.json"
    args = parse(["--scores", str(sd), "--labels", str(ld), "--track", "obstacle",
                  "--protocol", protocol, "--out", str(out), "--quiet"])
    assert args.func(args) == 0
    got = json.loads(out.read_text())
    want = M.evaluate(frames, track="obstacle", protocol=protocol).to_dict()
    assert got["protocol"] == protocol and got["inputs"]["n_frames"] == 4
    assert got["pixel"]["ap"] == want["pixel"]["ap"]
    assert got["components"]["f1_mean"] == want["components"]["f1_mean"]
    assert "AP" in capsys.readouterr().out


def test_metrics_cli_lists_missing_score_files(tmp_path):
    frames = make_frames(np.random.default_rng(1))
    sd, ld = write_smiyc(tmp_path, frames)
    (sd / "scene_0001.npy").unlink()
    (sd / "scene_0003.npy").unlink()
    args = parse(["--scores", str(sd), "--labels", str(ld), "--track", "anomaly", "--quiet",
                  "--out", str(tmp_path / "m.json")])
    with pytest.raises(FileNotFoundError, match=r"2 of 4 .*scene_0001\.npy, scene_0003\.npy"):
        args.func(args)


def test_metrics_cli_nan_names_the_frame_and_laf_labels_are_mapped(tmp_path):
    rng = np.random.default_rng(2)
    sd, ld = tmp_path / "s", tmp_path / "gtCoarse" / "test" / "01_Scene"
    sd.mkdir()
    ld.mkdir(parents=True)
    raw = np.ones((20, 30), np.uint8)          # free space
    raw[:4] = 0                                 # void
    raw[8:14, 10:20] = 37                       # a "non-hazard" id: still an obstacle
    fid = "01_Scene_000001_000020"
    cv2.imwrite(str(ld / f"{fid}_gtCoarse_labelIds.png"), raw)
    s = rng.random((20, 30)).astype(np.float32)
    s[raw == 37] += 1
    np.save(sd / f"{fid}.npy", s)
    out = tmp_path / "m.json"
    args = parse(["--scores", str(sd), "--labels", str(tmp_path / "gtCoarse"), "--track", "laf",
                  "--protocol", "exact", "--out", str(out), "--quiet"])
    assert args.func(args) == 0
    got = json.loads(out.read_text())
    assert got["pixel"]["n_pos"] == 60 and got["pixel"]["n_neg"] == 20 * 30 - 60 - 4 * 30
    assert got["pixel"]["ap"] == 1.0
    s[0, 0] = np.nan
    np.save(sd / f"{fid}.npy", s)
    with pytest.raises(ValueError, match=f"frame {fid}.*NaN"):
        args.func(args)
    args = parse(["--scores", str(sd), "--labels", str(tmp_path / "gtCoarse"), "--track", "laf",
                  "--laf-subset", "noknown", "--quiet"])
    with pytest.raises(ValueError, match="needs all 1203"):
        args.func(args)


def test_metrics_cli_missing_folders(tmp_path):
    args = parse(["--scores", str(tmp_path / "nope"), "--labels", str(tmp_path), "--track", "laf"])
    with pytest.raises(FileNotFoundError, match="no label files"):
        args.func(args)
