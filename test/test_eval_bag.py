"""rosbag2 conversion: round trip, compressed images, and clear errors for broken bags."""
import argparse

import numpy as np
import pytest

pytest.importorskip("rosbags")

from csl_ros.data.loaders import Record  # noqa: E402
from csl_ros.eval import bag as B  # noqa: E402
from csl_ros.eval import bag_cli  # noqa: E402

RNG = np.random.default_rng(0)


def records(n=4, h=24, w=40, camera=True, labels=True):
    out = []
    for i in range(n):
        rgb = RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lab = RNG.choice(np.array([0, 1, 255], np.uint8), (h, w)) if labels else None
        cam = ({"fx": 500.0 + i, "fy": 501.0, "cx": w / 2, "cy": h / 2, "height_m": 1.3,
                "pitch_deg": 1.5} if camera else None)
        out.append(Record(f"scene_{i:03d}", rgb, lab, cam))
    return out


def storage_file(bag_dir):
    return next(p for p in bag_dir.iterdir() if p.suffix in (".mcap", ".db3"))


@pytest.mark.parametrize("storage", B.FORMATS)
def test_round_trip_raw_images(tmp_path, storage):
    recs = records()
    out = tmp_path / "bag"
    summary = B.write_bag(recs, out, storage=storage, rate_hz=20.0)
    assert summary.frames == 4 and summary.labelled == 4
    assert set(summary.topics) == {B.IMAGE_TOPIC, B.INFO_TOPIC, B.LABEL_TOPIC, B.FRAME_ID_TOPIC,
                                   B.GROUND_TRUTH_TOPIC}
    with B.BagReader(out) as reader:
        frames = list(reader.frames())
        assert reader.stats.matched == 4 and reader.stats.unmatched_labels == 0
        assert reader.custom["csl_ros.rate_hz"] == "20.0"
    assert [f.frame_id for f in frames] == [r.frame_id for r in recs]
    for rec, fr in zip(recs, frames):
        np.testing.assert_array_equal(fr.image, rec.rgb)
        np.testing.assert_array_equal(fr.labels, rec.label)
        assert fr.camera_info["fx"] == rec.camera["fx"] and fr.camera_info["width"] == 40
        assert fr.ground_truth == {"camera": rec.camera, "obstacles": None}   # the per-frame mounting
    stamps = np.diff([f.stamp_ns for f in frames])
    assert np.all(stamps == 50_000_000)


def test_compressed_png_is_lossless_and_jpeg_close(tmp_path):
    recs = records(n=2, camera=False)
    B.write_bag(recs, tmp_path / "png", compressed=True, compressed_format="png")
    frames = list(B.read_bag(tmp_path / "png"))
    for rec, fr in zip(recs, frames):
        np.testing.assert_array_equal(fr.image, rec.rgb)
        np.testing.assert_array_equal(fr.labels, rec.label)
        assert fr.camera_info is None
    smooth = [Record("s", np.full((32, 48, 3), (200, 60, 30), np.uint8), None)]
    B.write_bag(smooth, tmp_path / "jpg", compressed=True)
    (fr,) = B.read_bag(tmp_path / "jpg")
    assert fr.labels is None
    assert np.abs(fr.image.astype(int) - smooth[0].rgb).max() <= 4


@pytest.mark.parametrize("storage", B.FORMATS)
def test_truncated_bag_names_the_file(tmp_path, storage):
    out = tmp_path / "bag"
    B.write_bag(records(n=6), out, storage=storage)
    f = storage_file(out)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(B.BagError, match=f"{f.name}.*(truncated|corrupt)"):
        list(B.read_bag(out))


def test_corrupt_chunk_and_missing_metadata(tmp_path):
    out = tmp_path / "bag"
    B.write_bag(records(n=6), out, storage="mcap")
    f = storage_file(out)
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 8192] = b"\xff" * 8192        # garbage over record headers in the middle
    f.write_bytes(bytes(data))
    with pytest.raises(B.BagError, match=f.name):
        list(B.read_bag(out))
    (out / "metadata.yaml").unlink()
    with pytest.raises(B.BagError, match="metadata.yaml is missing"):
        B.BagReader(out)
    with pytest.raises(FileNotFoundError, match="bag not found"):
        B.BagReader(tmp_path / "nothing")


def test_bad_input_and_no_partial_bag(tmp_path):
    out = tmp_path / "bag"
    bad = records(n=2)
    bad[1].label = bad[1].label[:-1]             # wrong label size in the second frame
    with pytest.raises(ValueError, match="scene_001: label must be"):
        B.write_bag(bad, out)
    assert not out.exists()                      # the partial bag was removed
    B.write_bag(records(n=1), out)
    with pytest.raises(ValueError, match="exists already"):
        B.write_bag(records(n=1), out)
    with pytest.raises(ValueError, match="no frames"):
        B.write_bag([], tmp_path / "empty")
    with pytest.raises(ValueError, match="rate"):
        B.write_bag(records(n=1), tmp_path / "r", rate_hz=0)


def cli(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    bag_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def write_obstacle_track(root, n=3, h=32, w=48):
    import cv2
    (root / "images").mkdir(parents=True)
    (root / "labels_masks").mkdir()
    recs = records(n=n, h=h, w=w, camera=False)
    for rec in recs:
        fid = f"gravel_{rec.frame_id}"
        cv2.imwrite(str(root / "images" / f"{fid}.webp"), rec.rgb[:, :, ::-1],
                    [cv2.IMWRITE_WEBP_QUALITY, 101])          # lossless
        cv2.imwrite(str(root / "labels_masks" / f"{fid}_labels_semantic.png"), rec.label)
    return recs


def test_cli_convert_and_info(tmp_path, capsys):
    recs = write_obstacle_track(tmp_path / "dataset_ObstacleTrack")
    out = tmp_path / "ot_bag"
    assert cli(["bag", "convert", "--dataset", "smiyc-obstacle", "--root", str(tmp_path),
                "--out", str(out), "--quiet", "--limit", "2"]) == 0
    frames = list(B.read_bag(out))
    assert [f.frame_id for f in frames] == ["gravel_scene_000", "gravel_scene_001"]
    np.testing.assert_array_equal(frames[0].image, recs[0].rgb)
    np.testing.assert_array_equal(frames[1].labels, recs[1].label)
    assert cli(["bag", "info", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "/eval/ood_labels" in text and "2 decoded, 2 with labels" in text
    with pytest.raises(ValueError, match="--root is required"):
        cli(["bag", "convert", "--dataset", "laf", "--out", str(tmp_path / "x")])


def test_cli_convert_synthroad_round_trip(tmp_path):
    from csl_ros.data.loaders import Synthroad

    out = tmp_path / "drive"
    assert cli(["bag", "convert", "--dataset", "synthroad", "--frames", "3", "--size", "48x96",
                "--seed", "3", "--rate", "5", "--format", "sqlite3", "--out", str(out),
                "--quiet"]) == 0
    want = list(Synthroad(seed=3, n_frames=3, size=(48, 96), fps=5.0))
    with B.BagReader(out) as reader:
        got = list(reader.frames())
        assert reader.custom["csl_ros.dataset"] == "synthroad"
        assert json_camera(reader.custom["csl_ros.camera"])["height_m"] == want[0].camera["height_m"]
    assert [g.frame_id for g in got] == [w.frame_id for w in want]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.image, w.rgb)
        np.testing.assert_array_equal(g.labels, w.label)
        assert g.camera_info["fy"] == pytest.approx(w.camera["fy"])
    assert np.all(np.diff([g.stamp_ns for g in got]) == 200_000_000)


def json_camera(text):
    import json
    return json.loads(text)
