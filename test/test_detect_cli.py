"""``csl-ros detect`` on folders: recursion, a corrupt file, a name collision, a video, the summary."""
import argparse
import json

import cv2
import numpy as np
import pytest

from csl_ros import detect_cli
from csl_ros.ros.testing import BrightnessDetector


def run(argv, capsys=None):
    parser = argparse.ArgumentParser()
    detect_cli.register(parser.add_subparsers())
    args = parser.parse_args(["detect", *argv, "--set", "input_height=64", "--set", "input_width=128"])
    return detect_cli.run(args, detector_factory=BrightnessDetector.from_config)


def write_video(path, frames, fps=10):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                             (frames[0].shape[1], frames[0].shape[0]))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    dark = np.full((40, 64, 3), 30, np.uint8)
    bright = np.full((40, 64, 3), 220, np.uint8)
    cv2.imwrite(str(d / "x.png"), dark)              # x.png and x.jpg: same stem, one folder
    cv2.imwrite(str(d / "x.jpg"), bright)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(200))   # corrupt
    cv2.imwrite(str(d / "sub" / "y.png"), dark)
    write_video(d / "clip.mp4", [np.full((48, 64, 3), 10 * k, np.uint8) for k in range(7)])
    (d / "notes.txt").write_text("not an input")
    return d


def test_folder_with_corrupt_file_collision_and_video(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert run([str(folder), "--out", str(out), "--every", "3"]) == 1      # one file failed
    captured = capsys.readouterr()
    assert f"skipped {folder / 'broken.png'}: cannot decode image {folder / 'broken.png'}" in captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("detect: 3 of 4 file(s) processed (2 image(s), 1 video(s) with 3 frame(s)), "
                              "1 failed (broken.png: cannot decode image")
    # x.png and x.jpg: both kept, told apart by their extension
    dark, bright = np.load(out / "x_png_anomaly.npy"), np.load(out / "x_jpg_anomaly.npy")
    assert dark.mean() < 0.2 < 0.8 < bright.mean()
    assert json.loads((out / "x_jpg_obstacles.json").read_text())["image"] == str(folder / "x.jpg")
    # the video, frame by frame: frames 0, 3, 6 of 7
    assert sorted(p.name for p in out.glob("clip_f*_anomaly.npy")) == [
        "clip_f000000_anomaly.npy", "clip_f000003_anomaly.npy", "clip_f000006_anomaly.npy"]
    assert np.load(out / "clip_f000006_anomaly.npy").shape == (48, 64)
    assert not (out / "sub").exists()                # not recursive by default
    assert not list(out.glob("broken*"))


def test_recursive_mirrors_the_tree_and_a_clean_run_exits_0(folder, tmp_path, capsys):
    (folder / "broken.png").unlink()
    out = tmp_path / "out"
    assert run([str(folder), "--out", str(out), "--recursive"]) == 0
    assert (out / "sub" / "y_anomaly.npy").is_file() and (out / "x_png_anomaly.npy").is_file()
    assert len(list(out.glob("clip_f*_anomaly.npy"))) == 7
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        "detect: 4 of 4 file(s) processed (3 image(s), 1 video(s) with 7 frame(s)), 0 failed")


def test_bad_arguments(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images .* or videos"):
        run([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    with pytest.raises(FileNotFoundError, match="no such file"):
        run([str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="--every must be >= 1"):
        run([str(tmp_path), "--out", str(tmp_path / "o"), "--every", "0"])
    (tmp_path / "fake.mp4").write_bytes(b"\x00" * 100)
    assert run([str(tmp_path / "fake.mp4"), "--out", str(tmp_path / "o")]) == 1


def test_detect_output_folder_is_scored_by_metrics_as_it_is(tmp_path):
    """csl-ros detect on SMIYC images, then csl-ros metrics on its output folder: no renaming."""
    from csl_ros.eval import metrics as M
    from csl_ros.eval import metrics_cli

    images, labels = tmp_path / "images", tmp_path / "labels_masks"
    images.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    want = []
    for i in range(3):
        lab = np.zeros((40, 64), np.uint8)
        lab[10:22, 20 + 5 * i:40 + 5 * i] = 1
        img = np.repeat((rng.random((40, 64)) * 100 + 150 * (lab == 1)).astype(np.uint8)[:, :, None], 3, 2)
        cv2.imwrite(str(images / f"road{i:02d}_x.webp"), img, [cv2.IMWRITE_WEBP_QUALITY, 101])
        cv2.imwrite(str(labels / f"road{i:02d}_x_labels_semantic.png"), lab)
        want.append((f"road{i:02d}_x", img[:, :, 0].astype(np.float32) / 255, lab))
    assert run([str(images), "--out", str(tmp_path / "det")]) == 0
    parser = argparse.ArgumentParser()
    metrics_cli.register(parser.add_subparsers())
    args = parser.parse_args(["metrics", "--scores", str(tmp_path / "det"), "--labels", str(labels),
                              "--track", "obstacle", "--out", str(tmp_path / "m.json"), "--quiet"])
    assert args.func(args) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    assert got["inputs"]["n_frames_scored"] == 3
    assert got["pixel"]["ap"] == M.evaluate(want, track="obstacle").pixel.ap
