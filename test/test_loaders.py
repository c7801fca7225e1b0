"""Dataset loaders on fixture trees in the real layouts, and the LostAndFound NoKnown selection."""
import json

import cv2
import numpy as np
import pytest

from csl_ros.data import loaders as L

# ------------------------------------------------------------------------------------------------
# LostAndFound NoKnown: 1203 tiny frames named like the real test split
# ------------------------------------------------------------------------------------------------

NOKNOWN_INDEX_DROPS = [17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792,
                       793]
NOKNOWN_PREFIXES = ("15_Rechbergstr_Deckenpfronn", "01_Hanns_Klemm_Str_45_000006",
                    "01_Hanns_Klemm_Str_45_000007", "10_Schlossberg_9_000004")


def laf_test_fids():
    """1203 fids in the LostAndFound format ``{NN}_{scene}_{seq:06d}_{frame:06d}``.

    The scene sizes are chosen so that, as on the real split, 1186 frames survive the index rule
    and 1043 the prefix rule.
    """
    scenes = [("01_Hanns_Klemm_Str_45", 13, 10), ("04_Maurener_Weg_8", 9, 14),
              ("05_Schafgasse_1", 12, 11), ("07_Festplatz_Flugfeld", 14, 10),
              ("10_Schlossberg_9", 8, 13), ("12_Herrenberger_Str_2", 10, 12),
              ("13_Elly_Beinhorn_Str", 6, 15)]
    fids = [f"{sc}_{s:06d}_{(k + 1) * 10:06d}" for sc, n_seq, n_fr in scenes
            for s in range(n_seq) for k in range(n_fr)]
    fids += [f"15_Rechbergstr_Deckenpfronn_{i // 10:06d}_{(i % 10 + 1) * 10:06d}" for i in range(111)]
    fids += [f"02_Hanns_Klemm_Str_44_{i // 12:06d}_{(i % 12 + 1) * 10:06d}"
             for i in range(1203 - len(fids))]
    return fids


def scene_folder(fid):
    return fid.rsplit("_", 2)[0]


@pytest.fixture(scope="module")
def laf_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("LostAndFound")
    img = np.zeros((8, 16, 3), np.uint8)
    raw = np.ones((8, 16), np.uint8)          # free space
    raw[0] = 0                                 # void row
    raw[4:6, 6:9] = 2                          # an obstacle
    ok, img_png = cv2.imencode(".png", img)
    ok2, lab_png = cv2.imencode(".png", raw)
    assert ok and ok2
    fids = laf_test_fids()
    for fid in fids:
        for kind, name, data in (("leftImg8bit", f"{fid}_leftImg8bit.png", img_png),
                                 ("gtCoarse", f"{fid}_gtCoarse_labelIds.png", lab_png)):
            d = root / kind / "test" / scene_folder(fid)
            d.mkdir(parents=True, exist_ok=True)
            (d / name).write_bytes(data.tobytes())
    return root, fids


def test_noknown_index_and_prefix_rules(laf_tree):
    root, fids = laf_tree
    ds = L.laf_noknown(root)
    assert len(fids) == 1203 and len(ds) == 1043
    ordered = sorted(fids)
    by_index = {ordered[i] for i in NOKNOWN_INDEX_DROPS}
    by_prefix = {f for f in ordered if f.startswith(NOKNOWN_PREFIXES)} - by_index
    assert len(by_index) == 17 and len(by_prefix) == 1186 - 1043
    assert set(ds.frame_ids) == set(fids) - by_index - by_prefix
    assert ds.frame_ids == sorted(ds.frame_ids)
    # The index rule acts on the sorted split, before the prefix rule: index 72 falls on a frame
    # the prefix rule would drop anyway, so the two sets overlap on the real-like names.
    assert any(f.startswith(NOKNOWN_PREFIXES) for f in by_index)
    valid = L.LostAndFound(root, "test", "valid")
    assert len(valid) == 1186 and set(valid.frame_ids) == set(fids) - by_index
    assert len(L.laf(root)) == 1203


def test_laf_record_mapping_and_camera(laf_tree, tmp_path):
    root, fids = laf_tree
    rec = L.laf_noknown(root)[0]
    assert rec.rgb.shape == (8, 16, 3) and rec.label.shape == (8, 16)
    assert (rec.label[0] == 255).all() and (rec.label[4:6, 6:9] == 1).all()
    assert (rec.label[1:4] == 0).all() and rec.camera is None
    cam_dir = tmp_path / "camera" / "test" / scene_folder(fids[0])
    cam_dir.mkdir(parents=True)
    (cam_dir / f"{fids[0]}_camera.json").write_text(json.dumps({
        "extrinsic": {"baseline": 0.21, "pitch": 0.05, "roll": 0.0, "x": 1.7, "y": 0.1, "yaw": 0.0,
                      "z": 1.18},
        "intrinsic": {"fx": 2268.36, "fy": 2225.54, "u0": 1048.64, "v0": 519.28}}))
    cam = L.camera_from_cityscapes_json(cam_dir / f"{fids[0]}_camera.json")
    assert cam["cx"] == 1048.64 and cam["height_m"] == 1.18
    assert cam["pitch_deg"] == pytest.approx(np.degrees(0.05))


def test_laf_incomplete_split_and_missing_files(tmp_path):
    root = tmp_path / "laf"
    fid = "01_Hanns_Klemm_Str_45_000000_000080"
    d = root / "leftImg8bit" / "test" / scene_folder(fid)
    d.mkdir(parents=True)
    cv2.imwrite(str(d / f"{fid}_leftImg8bit.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="gtCoarse folder not found"):
        L.laf(root)
    (root / "gtCoarse" / "test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"1 LostAndFound label file.*{fid}_gtCoarse"):
        L.laf(root)
    with pytest.raises(ValueError, match="has 1 frames, the benchmark's index rule needs all 1203"):
        L.laf_noknown(root)
    with pytest.raises(FileNotFoundError, match="LostAndFound root not found"):
        L.laf(tmp_path / "nope")
    with pytest.raises(ValueError, match="NoKnown subset is defined on the LostAndFound test"):
        L.laf_select([fid], "train", "noknown")


# ------------------------------------------------------------------------------------------------
# fixture trees written by synthroad's dataset writers
# ------------------------------------------------------------------------------------------------

SIZE = (64, 128)


@pytest.fixture(scope="module")
def synth_frames():
    from csl_ros.data.synthroad import render_frame
    return {"anomaly": [render_frame(s, SIZE, "anomaly") for s in (1, 2)],
            "obstacle": [render_frame(s, SIZE, "obstacle") for s in (3, 4)]}


def close_rgb(a, b, tol=12.0):
    """Lossy formats (jpg/webp) change pixel values slightly: compare the mean abs difference."""
    assert a.shape == b.shape and a.dtype == np.uint8
    assert np.abs(a.astype(float) - b).mean() < tol


def test_smiyc_tracks_from_writers(tmp_path, synth_frames):
    from csl_ros.data.writers import SmiycWriter

    wa = SmiycWriter(tmp_path, "anomaly")
    wo = SmiycWriter(tmp_path, "obstacle", prefix="gravel")
    for i, f in enumerate(synth_frames["anomaly"]):
        wa.write(f, i)
    for i, f in enumerate(synth_frames["obstacle"]):
        wo.write(f, i)
    wo2 = SmiycWriter(tmp_path, "obstacle", prefix="snowstorm")
    wo2.write(synth_frames["obstacle"][0], 7)
    at = L.open_dataset("smiyc-anomaly", tmp_path)
    assert at.frame_ids == ["validation0000", "validation0001"]
    for rec, f in zip(at, synth_frames["anomaly"]):
        np.testing.assert_array_equal(rec.label, f.ood_labels)
        close_rgb(rec.rgb, f.image)
        assert rec.camera is None
    ot = L.smiyc_obstacle(tmp_path / "dataset_ObstacleTrack")     # the track folder works too
    assert ot.frame_ids == ["gravel_000000", "gravel_000001", "snowstorm_000007"]
    assert L.smiyc_obstacle(tmp_path, scenes=["gravel"]).frame_ids == ot.frame_ids[:2]
    rec = ot[1]
    np.testing.assert_array_equal(rec.label, synth_frames["obstacle"][1].ood_labels)
    assert set(np.unique(rec.label)) <= {0, 1, 255} and (rec.label == 1).any()
    # Test frames without labels: skipped, or yielded with label None.
    (tmp_path / "dataset_AnomalyTrack" / "labels_masks" / "validation0001_labels_semantic.png").unlink()
    assert len(L.smiyc_anomaly(tmp_path)) == 1
    unlabelled = L.smiyc_anomaly(tmp_path, require_labels=False)
    assert len(unlabelled) == 2 and unlabelled[1].label is None


def test_lostandfound_from_writers(tmp_path, synth_frames):
    from csl_ros.data.writers import LostAndFoundWriter

    w = LostAndFoundWriter(tmp_path, "test")
    frames = synth_frames["obstacle"]
    for i, f in enumerate(frames):
        w.write(f, 4, "Maurener_Weg_8", seq=0, frame_no=10 * (i + 1))
    ds = L.open_dataset("laf", tmp_path)
    assert ds.frame_ids == ["04_Maurener_Weg_8_000000_000010", "04_Maurener_Weg_8_000000_000020"]
    for rec, f in zip(ds, frames):
        np.testing.assert_array_equal(rec.rgb, f.image)                 # png: lossless
        # free space -> 0, obstacle ids -> 1, id 0 -> void: the SMIYC obstacle encoding
        np.testing.assert_array_equal(rec.label, f.ood_labels)
        for key in ("fx", "fy", "cx", "cy", "height_m", "pitch_deg"):
            assert rec.camera[key] == pytest.approx(getattr(f.camera, key)), key


def test_cityscapes_from_writers(tmp_path, synth_frames):
    from csl_ros.data.writers import CityscapesWriter

    w = CityscapesWriter(tmp_path, "val", city="frankfurt")
    frames = synth_frames["anomaly"]
    paths = [w.write(f, seq=i) for i, f in enumerate(frames)]
    ds = L.open_dataset("cityscapes", tmp_path, split="val")
    assert ds.frame_ids == ["frankfurt_000000_000019", "frankfurt_000001_000019"]
    for rec, f in zip(ds, frames):
        np.testing.assert_array_equal(rec.semantic, f.train_ids)
        np.testing.assert_array_equal(rec.label, np.where(f.train_ids == 255, 255, 0))
        np.testing.assert_array_equal(rec.rgb, f.image)
        assert rec.camera["height_m"] == pytest.approx(f.camera.height_m)
    # Without labelTrainIds the labelIds are mapped to the same trainIds.
    paths[0]["train_ids"].unlink()
    np.testing.assert_array_equal(ds[0].semantic, frames[0].train_ids)


def test_fishyscapes_layouts(tmp_path, synth_frames):
    from csl_ros.data.writers import LostAndFoundWriter

    frames = synth_frames["obstacle"]
    w = LostAndFoundWriter(tmp_path / "laf", "train")
    fids = []
    for i, f in enumerate(frames):
        p = w.write(f, 13, "Elly_Beinhorn_Str", seq=i, frame_no=50)
        fids.append(p["image"].name[:-len("_leftImg8bit.png")])
    labels = tmp_path / "fs" / "fishyscapes_lostandfound"
    labels.mkdir(parents=True)
    for i, (fid, f) in enumerate(zip(fids, frames)):
        raw = f.ood_labels.copy()
        raw[raw == 255] = 7                 # any other value is void too
        cv2.imwrite(str(labels / f"{i:04d}_{fid}_labels.png"), raw)
    ds = L.open_dataset("fishyscapes-laf", tmp_path / "fs", laf_root=tmp_path / "laf")
    assert ds.frame_ids == sorted(fids)
    for rec, f in zip(ds, frames):
        np.testing.assert_array_equal(rec.label, f.ood_labels)
        np.testing.assert_array_equal(rec.rgb, f.image)
    # RbA-style flat image folder next to the labels
    flat = tmp_path / "fs" / "laf_images"
    flat.mkdir()
    for fid, f in zip(fids, frames):
        cv2.imwrite(str(flat / f"{fid}_leftImg8bit.png"), f.image[:, :, ::-1])
    assert len(L.FishyscapesLAF(tmp_path / "fs")) == 2
    (flat / f"{fids[1]}_leftImg8bit.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"1 Fishyscapes frame.*{fids[1]}"):
        L.FishyscapesLAF(tmp_path / "fs")


@pytest.mark.parametrize("ext", [".png", ".webp", ".jpg"])
def test_fishyscapes_benchmark_layout(tmp_path, synth_frames, ext):
    """dataset_FishyLAF/labels/val/{fid}_fishy-labels.png beside dataset_LostAndFound (the
    benchmark's datasets folder), LostAndFound images in any of the formats its loader accepts."""
    frames = synth_frames["obstacle"]
    datasets = tmp_path / "datasets"
    fids = [f"13_Elly_Beinhorn_Str_{i:06d}_000050" for i in range(len(frames))]
    labels = datasets / "dataset_FishyLAF" / "labels" / "val"
    labels.mkdir(parents=True)
    for fid, f, split in zip(fids, frames, ("train", "test")):
        cv2.imwrite(str(labels / f"{fid}_fishy-labels.png"), f.ood_labels)
        d = datasets / "dataset_LostAndFound" / "leftImg8bit" / split / "13_Elly_Beinhorn_Str"
        d.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(d / f"{fid}_leftImg8bit{ext}"), f.image[:, :, ::-1],
                           [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else [])
    for root in (datasets, datasets / "dataset_FishyLAF"):
        ds = L.open_dataset("fishyscapes-laf", root)
        assert ds.frame_ids == fids
        for rec, f in zip(ds, frames):
            np.testing.assert_array_equal(rec.label, f.ood_labels)
            assert rec.rgb.shape == f.image.shape
            if ext != ".jpg":
                np.testing.assert_array_equal(rec.rgb, f.image)
    # The zip's layout in the same root as well: ambiguous, refused with both folders named.
    (datasets / "fishyscapes_lostandfound").mkdir()
    with pytest.raises(ValueError, match="two Fishyscapes label folders.*labels/val.*fishyscapes_lostandfound"):
        L.FishyscapesLAF(datasets)
    with pytest.raises(FileNotFoundError, match="Fishyscapes label folder not found"):
        L.FishyscapesLAF(tmp_path / "datasets" / "dataset_LostAndFound")


def test_parse_label_name():
    assert L.parse_label_name("validation0000_labels_semantic.png") == ("validation0000", "smiyc")
    assert L.parse_label_name("01_a_000001_000010_gtCoarse_labelIds.png") == ("01_a_000001_000010", "laf")
    assert L.parse_label_name("04_b_000000_000030_fishy-labels.png") == ("04_b_000000_000030",
                                                                           "fishyscapes")
    assert L.parse_label_name("0007_04_b_000000_000030_labels.png") == ("04_b_000000_000030",
                                                                          "fishyscapes")
    assert L.parse_label_name("x_labels.png") is None          # no NNNN_ prefix
    assert L.parse_label_name("x_anomaly.png") is None


def test_synthroad_loader_matches_render_sequence():
    from csl_ros.data.synthroad import render_sequence

    ds = L.open_dataset("synthroad", seed=5, n_frames=2, size=SIZE, obstacles="anomaly")
    recs = list(ds)
    want = list(render_sequence(5, 2, size=SIZE, obstacles="anomaly"))
    assert [r.frame_id for r in recs] == ["synthroad_s5_000000", "synthroad_s5_000001"]
    for r, f in zip(recs, want):
        np.testing.assert_array_equal(r.rgb, f.image)
        np.testing.assert_array_equal(r.label, f.ood_labels)
        np.testing.assert_array_equal(r.semantic, f.train_ids)
        assert r.camera["pitch_deg"] == f.camera.pitch_deg
    np.testing.assert_array_equal(ds[1].label, want[1].ood_labels)


def test_malformed_trees_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="SMIYC root not found"):
        L.smiyc_anomaly(tmp_path / "none")
    (tmp_path / "dataset_ObstacleTrack" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no \\*.webp images in .*dataset_ObstacleTrack/images"):
        L.smiyc_obstacle(tmp_path)
    cv2.imwrite(str(tmp_path / "dataset_ObstacleTrack" / "images" / "a_000000.webp"),
                np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="labels folder not found.*labels_masks"):
        L.smiyc_obstacle(tmp_path)
    with pytest.raises(FileNotFoundError, match="Cityscapes gtFine folder not found"):
        (tmp_path / "cs" / "leftImg8bit" / "val").mkdir(parents=True)
        L.Cityscapes(tmp_path / "cs")
    with pytest.raises(ValueError, match="unknown dataset"):
        L.open_dataset("kitti", tmp_path)
    # a truncated image and odd label files
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), np.full((16, 16, 3), 9, np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot decode image .*bad.png"):
        L.read_rgb(bad)
    with pytest.raises(ValueError, match="cannot decode label file .*bad.png"):
        L.read_label_png(bad)
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 1
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    with pytest.raises(ValueError, match="3 distinct channels"):
        L.read_label_png(tmp_path / "rgb.png")
    from PIL import Image
    pal = Image.fromarray(np.array([[0, 1], [255, 1]], np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0, 0, 0] * 253 + [255, 255, 255])
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(L.read_label_png(tmp_path / "pal.png"), [[0, 1], [255, 1]])
    with pytest.raises(ValueError, match="malformed camera file"):
        (tmp_path / "c.json").write_text("{}")
        L.camera_from_cityscapes_json(tmp_path / "c.json")
