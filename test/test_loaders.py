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
