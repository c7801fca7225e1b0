"""``csl-ros metrics`` on folders of score maps and label PNGs."""
import argparse
import json
import re

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


def test_metrics_cli_lists_missing_score_files(tmp_path, capsys):
    """Labelled frames without a map: the others are scored, the missing ones listed; exit 1 unless
    --allow-dropped."""
    frames = make_frames(np.random.default_rng(1))
    sd, ld = write_smiyc(tmp_path, frames)
    (sd / "scene_0001.npy").unlink()
    (sd / "scene_0003.npy").unlink()
    rc, got = run_metrics(sd, ld, tmp_path / "m.json", track="anomaly")
    assert rc == 1
    assert "2 of 4 labelled frames have no score map" in capsys.readouterr().err
    assert got["inputs"]["n_frames"] == 4 and got["inputs"]["n_frames_scored"] == 2
    assert got["inputs"]["dropped_frames"] == ["scene_0001", "scene_0003"]
    assert re.search(r"<stem>_anomaly.npy\): scene_0001\.npy, scene_0003\.npy", got["failures"][0])
    kept = [frames[0], frames[2]]
    assert got["pixel"]["ap"] == M.evaluate(kept, track="anomaly").pixel.ap
    rc, got = run_metrics(sd, ld, tmp_path / "m.json", "--allow-dropped", track="anomaly")
    assert rc == 0 and got["failures"] == [] and got["inputs"]["n_frames_dropped"] == 2


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


def run_metrics(sd, ld, out, *extra, track="obstacle"):
    args = parse(["--scores", str(sd), "--labels", str(ld), "--track", track, "--out", str(out),
                  "--quiet", *extra])
    rc = args.func(args)
    return rc, json.loads(out.read_text())


@pytest.mark.parametrize("style", ["fid", "label_stem", "detect"])
def test_metrics_cli_accepts_the_three_score_naming_styles(tmp_path, style):
    """<fid>.npy (ours), <label stem>.npy (official tooling) and csl-ros detect's <stem>_anomaly.npy
    all give the same numbers."""
    frames = make_frames(np.random.default_rng(4))
    sd, ld = write_smiyc(tmp_path, frames)
    want = M.evaluate(frames, track="obstacle").to_dict()
    if style != "fid":
        for fid, _, _ in frames:
            new = f"{fid}_labels_semantic.npy" if style == "label_stem" else f"{fid}_anomaly.npy"
            (sd / f"{fid}.npy").rename(sd / new)
    if style == "detect":      # a real detect folder also holds other outputs
        (sd / "scene_0000_obstacles.json").write_text("{}")
    rc, got = run_metrics(sd, ld, tmp_path / "m.json")
    assert rc == 0 and got["inputs"]["n_frames_scored"] == 4 and got["inputs"]["unused_score_files"] == 0
    assert got["pixel"]["ap"] == want["pixel"]["ap"]
    assert got["components"]["f1_mean"] == want["components"]["f1_mean"]


def test_metrics_cli_two_candidates_for_one_frame_is_an_error_naming_both(tmp_path):
    frames = make_frames(np.random.default_rng(5))
    sd, ld = write_smiyc(tmp_path, frames)
    np.save(sd / "scene_0002_anomaly.npy", frames[2][1])
    args = parse(["--scores", str(sd), "--labels", str(ld), "--track", "obstacle", "--quiet",
                  "--out", str(tmp_path / "m.json")])
    with pytest.raises(ValueError, match=r"two score maps for frame scene_0002: .*scene_0002\.npy and "
                                         r".*scene_0002_anomaly\.npy"):
        args.func(args)
    assert not (tmp_path / "m.json").exists()


def test_metrics_cli_size_rule(tmp_path):
    """A narrower map is upsampled; a map as wide but with fewer rows is an error naming both sizes."""
    frames = make_frames(np.random.default_rng(6), h=40, w=60)
    sd, ld = write_smiyc(tmp_path, frames)
    np.save(sd / "scene_0001.npy", frames[1][1][:, ::2])        # 40x30: upsampled
    rc, _ = run_metrics(sd, ld, tmp_path / "m.json")
    assert rc == 0
    np.save(sd / "scene_0001.npy", frames[1][1][:32])           # 32x60 for a 40x60 label
    args = parse(["--scores", str(sd), "--labels", str(ld), "--track", "obstacle", "--quiet",
                  "--out", str(tmp_path / "m2.json")])
    with pytest.raises(ValueError, match="frame scene_0001: score map is 32x60 .* label is 40x60"):
        args.func(args)


def test_metrics_cli_exits_1_when_no_frame_is_scored(tmp_path, capsys):
    frames = [(fid, s, np.full_like(lab, 255)) for fid, s, lab in make_frames(np.random.default_rng(7))]
    sd, ld = write_smiyc(tmp_path, frames)
    rc, got = run_metrics(sd, ld, tmp_path / "m.json")
    assert rc == 1
    assert got["inputs"]["n_frames"] == 4 and got["inputs"]["n_frames_scored"] == 0
    assert got["pixel"]["n_frames_void"] == 4 and "no frame was scored" in got["failures"][0]
    assert "no frame was scored" in capsys.readouterr().err


@pytest.mark.parametrize("layout", ["benchmark", "zip"])
def test_metrics_cli_scores_fishyscapes_labels(tmp_path, layout):
    """Fishyscapes labels in both layouts with --track fishyscapes (Anomaly Track sizes 500 / 100)."""
    rng = np.random.default_rng(8)
    frames = []
    for i in range(3):
        lab = np.zeros((64, 96), np.uint8)
        lab[:6] = 255
        lab[20:44, 30:60] = 1                              # 720 px: kept by the 100 px filter
        lab[50:55, 5:10] = 1                               # 25 px: voided by the 100 px filter
        s = (rng.random(lab.shape) * 0.5 + (lab == 1) * 0.6).astype(np.float32)
        frames.append((f"04_Maurener_Weg_8_{i:06d}_000030", s, lab))
    sd = tmp_path / "scores"
    sd.mkdir()
    ld = tmp_path / ("dataset_FishyLAF/labels/val" if layout == "benchmark" else "fishyscapes_lostandfound")
    ld.mkdir(parents=True)
    for i, (fid, s, lab) in enumerate(frames):
        name = f"{fid}_fishy-labels.png" if layout == "benchmark" else f"{i:04d}_{fid}_labels.png"
        cv2.imwrite(str(ld / name), lab)
        np.save(sd / f"{fid}.npy", s)
    rc, got = run_metrics(sd, tmp_path, tmp_path / "m.json", track="fishyscapes")
    assert rc == 0
    want = M.evaluate(frames, track="anomaly").to_dict()
    assert got["track"] == "fishyscapes" and got["components"]["segsize"] == 500
    assert got["components"]["instsize"] == 100 and got["components"]["n_gt_components"] == 3
    assert got["pixel"]["ap"] == want["pixel"]["ap"]
    assert got["components"]["f1_mean"] == want["components"]["f1_mean"]
