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
    assert "1 MCAP chunk(s) CRC-verified, 0 without a CRC" in text
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


# ------------------------------------------------------------------------------------------------
# MCAP integrity: chunk CRCs written and verified, damaged chunks and records named, --salvage
# ------------------------------------------------------------------------------------------------

def mcap_chunks(path):
    """(byte offset, stored uncompressed CRC, records) of every chunk, read straight from the format
    (magic, then opcode u8 + length u64 records; chunk: 3 x u64, crc u32, compression string, size u64)."""
    import struct
    data = path.read_bytes()
    pos, out = 8, []
    while True:
        op, length = struct.unpack_from("<BQ", data, pos)
        body = data[pos + 9:pos + 9 + length]
        if op == 0x0F:                               # data end
            return out, struct.unpack_from("<I", body)[0]
        if op == 0x06:
            crc, = struct.unpack_from("<I", body, 24)
            n, = struct.unpack_from("<I", body, 28)
            assert n == 0                            # uncompressed chunks
            out.append((pos, crc, body[40:]))
        pos += 9 + length


def big_records(n=6):
    return records(n=n, h=256, w=512)                # ~0.5 MB per frame: several chunks


def test_written_mcap_bags_carry_chunk_crcs(tmp_path):
    import zlib
    B.write_bag(big_records(), tmp_path / "bag")
    f = storage_file(tmp_path / "bag")
    chunks, data_crc = mcap_chunks(f)
    assert len(chunks) >= 3 and data_crc != 0
    for _, crc, recs in chunks:
        assert crc == zlib.crc32(recs) != 0
    with B.BagReader(tmp_path / "bag") as reader:     # rosbags itself also checks non-zero CRCs
        assert len(list(reader.frames())) == 6
        assert reader.stats.chunks_verified == len(chunks) and reader.stats.chunks_without_crc == 0


def corrupt_second_chunk(bag_dir):
    """Flip bytes in the middle of the second chunk's data: image pixels, still decodable."""
    f = storage_file(bag_dir)
    chunks, _ = mcap_chunks(f)
    off, _, recs = chunks[1]
    data = bytearray(f.read_bytes())
    mid = off + 9 + 40 + len(recs) // 2
    data[mid:mid + 4] = bytes(255 - b for b in data[mid:mid + 4])
    f.write_bytes(bytes(data))
    return f, off


def test_corrupt_chunk_is_refused_naming_file_offset_and_topics(tmp_path):
    B.write_bag(big_records(), tmp_path / "bag")
    f, off = corrupt_second_chunk(tmp_path / "bag")
    with pytest.raises(B.BagError, match=rf"{f.name}: chunk at byte offset {off} \(messages logged "
                                         rf"\d+\.\.\d+ ns, topics .*/camera/image_raw.*\) fails its CRC "
                                         rf"check"):
        list(B.read_bag(tmp_path / "bag"))
    # --salvage: the chunk is skipped and listed; the frames of the other chunks are read
    with B.BagReader(tmp_path / "bag", salvage=True) as reader:
        frames = list(reader.frames())
        assert 0 < len(frames) < 6
        (skipped,) = reader.stats.skipped
        assert skipped["byte_offset"] == off and skipped["file"] == str(f)
        assert "/camera/image_raw" in skipped["topics"] and "CRC" in skipped["reason"]
    assert all(fr.labels is not None for fr in frames)


def test_corrupt_record_is_refused_naming_file_topic_and_stamp(tmp_path):
    """A record damaged before the CRC was computed (a faulty recorder): the message does not decode."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = B.typestore()
    recs = records(n=4)
    stamps = [B.DEFAULT_START_NS + i * 10**8 for i in range(4)]
    with Writer(tmp_path / "bag", version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        img = writer.add_connection(B.IMAGE_TOPIC, B.IMAGE_T, typestore=ts)
        lab = writer.add_connection(B.LABEL_TOPIC, B.IMAGE_T, typestore=ts)
        for r, t in zip(recs, stamps):
            raw = ts.serialize_cdr(B.array_to_image_msg(r.rgb, t), B.IMAGE_T)
            writer.write(img, t, raw[:len(raw) // 2] if t == stamps[2] else raw)   # frame 2: cut short
            writer.write(lab, t, ts.serialize_cdr(B.array_to_image_msg(r.label, t), B.IMAGE_T))
    f = storage_file(tmp_path / "bag")
    with B.BagReader(tmp_path / "bag") as reader:   # rosbags wrote no CRCs: said, not verified
        assert reader.stats.chunks_without_crc >= 1 and "carry no CRC" in reader.stats.notes[0]
    B.add_mcap_crcs(f)
    with pytest.raises(B.BagError, match=rf"{f.name}: /camera/image_raw at {stamps[2]} ns: corrupt message"):
        list(B.read_bag(tmp_path / "bag"))
    with B.BagReader(tmp_path / "bag", salvage=True) as reader:
        frames = list(reader.frames())
        assert [fr.stamp_ns for fr in frames] == [stamps[0], stamps[1], stamps[3]]
        (skipped,) = reader.stats.skipped
        assert skipped["topic"] == B.IMAGE_TOPIC and skipped["log_time_ns"] == stamps[2]
        assert reader.stats.unmatched_labels == 1        # its label is counted, not lost silently


@pytest.mark.parametrize("layout", ["benchmark", "zip"])
def test_cli_convert_fishyscapes_both_layouts(tmp_path, layout):
    """`bag convert --dataset fishyscapes-laf`: the benchmark's dataset_FishyLAF (LostAndFound .webp
    images beside it) and the public zip (NNNN_{fid}_labels.png, a flat laf_images/ folder of .png)."""
    import cv2
    recs = records(n=2, camera=False)
    fids = [f"04_Maurener_Weg_8_{i:06d}_000030" for i in range(2)]
    if layout == "benchmark":
        root = tmp_path / "datasets"
        labels = root / "dataset_FishyLAF" / "labels" / "val"
        images = root / "dataset_LostAndFound" / "leftImg8bit" / "train" / "04_Maurener_Weg_8"
        ext, params = ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]
    else:
        root = tmp_path / "fs"
        labels = root / "fishyscapes_lostandfound"
        images = root / "laf_images"
        ext, params = ".png", []
    labels.mkdir(parents=True)
    images.mkdir(parents=True)
    for i, (fid, rec) in enumerate(zip(fids, recs)):
        name = f"{fid}_fishy-labels.png" if layout == "benchmark" else f"{i:04d}_{fid}_labels.png"
        cv2.imwrite(str(labels / name), rec.label)
        cv2.imwrite(str(images / f"{fid}_leftImg8bit{ext}"), rec.rgb[:, :, ::-1], params)
    out = tmp_path / "bag"
    assert cli(["bag", "convert", "--dataset", "fishyscapes-laf", "--root", str(root), "--out", str(out),
                "--quiet"]) == 0
    frames = list(B.read_bag(out))
    assert [f.frame_id for f in frames] == fids
    for f, rec in zip(frames, recs):
        np.testing.assert_array_equal(f.labels, rec.label)
        np.testing.assert_array_equal(f.image, rec.rgb)
