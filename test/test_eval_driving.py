"""Distance-aware driving metrics (csl_ros.eval.driving): distances, bands by hand, tracking."""
import json
import math

import numpy as np
import pytest

pytest.importorskip("rosbags")

from csl_ros.config import DetectorConfig, apply_overrides  # noqa: E402
from csl_ros.data.loaders import Synthroad, camera_from_cityscapes_json  # noqa: E402
from csl_ros.eval import bag as B  # noqa: E402
from csl_ros.eval.driving import (DrivingAccumulator, GroundTruth, band_table, component_distances,  # noqa: E402
                                  frame_geometry, ground_truth_of)
from csl_ros.eval.scoring import match_instances  # noqa: E402


def test_synthroad_obstacle_distances_are_the_generators_and_agree_with_the_camera(tmp_path):
    ds = Synthroad(seed=7, n_frames=4, size=(192, 384), obstacles="obstacle")
    frames_ds = list(ds)
    B.write_bag(iter(frames_ds), tmp_path / "bag", dataset="synthroad")
    cfg = DetectorConfig()
    checked = 0
    for rec, fr in zip(frames_ds, B.read_bag(tmp_path / "bag")):
        truth = ground_truth_of(fr)
        assert truth.obstacles == rec.obstacles       # the generator's records travel in the bag
        cam, source = frame_geometry(truth, fr.labels.shape, cfg)
        assert source == "camera file" and cam.height_m == pytest.approx(rec.camera["height_m"])
        m = match_instances(np.zeros(fr.labels.shape, np.uint16), fr.labels, 10)
        exact = component_distances(m.gt, m.gt_counted, truth, cam, source)
        flat = component_distances(m.gt, m.gt_counted, GroundTruth(truth.camera_info, truth.camera), cam, source)
        for c, (d, src, key) in exact.items():
            ob = next(o for o in rec.obstacles if o["instance_id"] == key)
            assert src == "generator" and d == ob["distance_m"]
            # the generator's world distance (obstacle centre) vs flat ground under the component's
            # bottom centre (its front face), with the frame's camera: within half its depth + 10 %
            d_flat = flat[c][0]
            if 5.0 <= d <= 40.0:
                assert abs(d_flat - d) <= ob["depth_m"] / 2 + 0.10 * d, (c, d, d_flat)
                checked += 1
    assert checked >= 3


def test_lostandfound_distance_from_a_camera_file_by_hand(tmp_path):
    # A LostAndFound camera file (Cityscapes layout): height z = 1.32 m, pitch 0.032 rad (down).
    path = tmp_path / "01_Hanns_Klemm_Str_45_000000_000050_camera.json"
    path.write_text(json.dumps({"extrinsic": {"baseline": 0.21, "pitch": 0.032, "roll": 0.0, "x": 1.7,
                                              "y": 0.1, "yaw": 0.0, "z": 1.32},
                                "intrinsic": {"fx": 2268.36, "fy": 2268.36, "u0": 1048.64, "v0": 519.28}}))
    camera = camera_from_cityscapes_json(path)
    labels = np.zeros((1024, 2048), np.uint8)
    labels[600:620, 1000:1040] = 1                     # an obstacle whose bottom edge is at v = 620
    info = {"fx": 2268.36, "fy": 2268.36, "cx": 1048.64, "cy": 519.28, "width": 2048, "height": 1024}
    truth = GroundTruth(camera_info=info, camera=camera)
    cam, source = frame_geometry(truth, labels.shape, DetectorConfig())   # config mounting is NOT used
    assert source == "camera file"
    m = match_instances(np.zeros(labels.shape, np.uint16), labels, 10)
    ((d, src, key),) = component_distances(m.gt, m.gt_counted, truth, cam, source).values()
    # by hand: yn = (620 - 519.28) / 2268.36 = 0.044402; the level ray falls by
    # yn cos(0.032) + sin(0.032) = 0.076374 and runs forward -yn sin(0.032) + cos(0.032) = 0.998067
    # per unit: distance = 1.32 * 0.998067 / 0.076374 = 17.250 m
    assert d == pytest.approx(17.250, abs=0.005) and src == "camera file" and key is None
    # without the camera file: camera_info and the configured mounting; without camera_info: unknown
    cfg = apply_overrides(DetectorConfig(), {"camera_height_m": 1.5, "camera_pitch_deg": 0.0})
    cam2, source2 = frame_geometry(GroundTruth(camera_info=info), labels.shape, cfg)
    assert source2 == "configured mounting"
    ((d2, _, _),) = component_distances(m.gt, m.gt_counted, None, cam2, source2).values()
    assert d2 == pytest.approx(1.5 / ((620 - 519.28) / 2268.36))
    assert frame_geometry(GroundTruth(), labels.shape, cfg) == (None, "unknown")


def test_distance_band_table_on_a_tiny_case_by_hand():
    # Camera: fx = fy = 100, cx = 50, cy = 0 (horizon at the top row), 1 m high, level. A pixel
    # region whose bottom edge is at row v lies at 100 / v metres.
    info = {"fx": 100.0, "fy": 100.0, "cx": 50.0, "cy": 0.0, "width": 100, "height": 80}
    truth = GroundTruth(camera_info=info, camera={"height_m": 1.0, "pitch_deg": 0.0})
    cfg = apply_overrides(DetectorConfig(), {"track_confirm_hits": 2, "track_confirm_window": 2,
                                             "track_max_missed": 1})
    acc = DrivingAccumulator(cfg, instsize=4)

    def frame(k):
        labels = np.zeros((80, 100), np.uint8)
        inst = np.zeros((80, 100), np.uint16)
        labels[60:80, 10:20] = 1       # A: bottom edge 80 -> 1.25 m   (band 0-10)
        labels[5:8, 30:34] = 1         # B: bottom edge 8  -> 12.5 m   (band 10-20)
        labels[2:4, 60:64] = 1         # C: bottom edge 4  -> 25 m     (band 20-30)
        inst[60:80, 10:20] = 1         # A found in both frames
        if k == 0:
            inst[5:8, 30:34] = 2       # B found in frame 0 only
            inst[40:45, 80:90] = 3     # a false alarm at 100 / 45 = 2.2 m in frame 0
        inst[1:3, 80:82] = 4           # a false alarm at 100 / 3 = 33 m in both frames
        return labels, inst

    for k in range(2):
        labels, inst = frame(k)
        acc.add(k * 100_000_000, labels, inst, (inst > 0).astype(np.float32), truth)
    r = acc.result()
    pf, tr = r["per_frame"], r["tracked"]
    # per frame: 0-10 m A 2/2; 10-20 m B 1/2; 20-30 m C 0/2; false alarms: 2.2 m once, 33 m twice
    assert [b["gt"] for b in pf["bands"]] == [2, 2, 2, 0, 0, 0]
    assert [b["detected"] for b in pf["bands"]] == [2, 1, 0, 0, 0, 0]
    assert [b["false_alarms"] for b in pf["bands"]] == [1, 0, 0, 2, 0, 0]
    assert pf["near"] == {"within_m": 30.0, "gt": 6, "detected": 3, "recall": 0.5}
    assert pf["false_alarms_per_frame"] == 1.5
    # 3 false alarms in 2 frames of 0.1 s = 0.2 s = 1/300 min
    assert pf["false_alarms_per_minute"] == pytest.approx(3 / (0.2 / 60))
    # tracked (2 of 2): frame 0 confirms nothing; frame 1 confirms A and the 33 m alarm
    assert [b["detected"] for b in tr["bands"]] == [1, 0, 0, 0, 0, 0]
    assert [b["false_alarms"] for b in tr["bands"]] == [0, 0, 0, 1, 0, 0]
    assert tr["near"]["recall"] == pytest.approx(1 / 6) and tr["false_alarms_per_frame"] == 0.5
    assert pf["fragmentation"] == 1.0
    header, rows = band_table(r)
    assert rows[0][:4] == ["0-10 m", 2, "100.0", "50.0"] and rows[-1][2] == "50.0"


def test_detection_range_first_detected_and_held():
    acc = DrivingAccumulator(DetectorConfig(), instsize=1)
    labels = np.zeros((20, 20), np.uint8)
    labels[5:8, 5:8] = 1
    ids = (labels == 1).astype(np.uint8)
    hits = [False, True, False, True, True, True, False]   # the last frame is nearer than 5 m
    dists = [40.0, 35.0, 30.0, 25.0, 20.0, 15.0, 4.0]
    for k, (hit, d) in enumerate(zip(hits, dists)):
        truth = GroundTruth(obstacles=[{"instance_id": 7, "distance_m": d}], obstacle_ids=ids)
        acc.add(k * 10**8, labels, (labels * hit).astype(np.uint16), labels.astype(np.float32), truth)
    dr = acc.result()["per_frame"]["detection_range"]
    assert dr["per_obstacle"] == [{"obstacle": 7, "frames": 7, "max_distance_m": 40.0,
                                   "first_detected_m": 35.0, "held_from_m": 25.0}]


def test_coasted_tracks_are_scored_by_their_predicted_box_in_the_tracked_output():
    # Same camera as the band table: a region whose bottom edge is at row v lies at 100 / v metres.
    info = {"fx": 100.0, "fy": 100.0, "cx": 50.0, "cy": 0.0, "width": 100, "height": 80}
    truth = GroundTruth(camera_info=info, camera={"height_m": 1.0, "pitch_deg": 0.0})
    cfg = apply_overrides(DetectorConfig(), {"track_max_missed": 1, "track_coast": True})
    acc = DrivingAccumulator(cfg, instsize=4)
    labels = np.zeros((80, 100), np.uint8)
    labels[20:30, 10:20] = 1           # A, bottom edge 30 -> 3.3 m: static in the image
    labels[20:25, 60:70] = 255         # void off the road
    inst = np.zeros((80, 100), np.uint16)
    inst[20:30, 10:20] = 1             # A found
    inst[40:50, 40:50] = 2             # a false alarm at 2 m (not void)
    inst[20:25, 60:70] = 3             # an instance on void: not counted
    rows = [acc.add(0, labels, inst, (inst > 0).astype(np.float32), truth)]
    # frame 1: nothing detected; all three tracks coast in place (seen once: no velocity)
    rows.append(acc.add(100_000_000, labels, np.zeros_like(inst), np.zeros((80, 100), np.float32), truth))
    # frame 2: still nothing; the tracks were missed twice (> max_missed 1) and are gone
    rows.append(acc.add(200_000_000, labels, np.zeros_like(inst), np.zeros((80, 100), np.float32), truth))
    assert [r["per_frame"] for r in rows] == [{"detected": 1, "false_alarms": 1}, {"detected": 0, "false_alarms": 0},
                                              {"detected": 0, "false_alarms": 0}]
    # tracked: A's coasted box detects it in frame 1, the false alarm's coasted box is false again,
    # the void instance's box is not counted
    assert [r["tracked"] for r in rows] == [{"detected": 1, "false_alarms": 1}, {"detected": 1, "false_alarms": 1},
                                            {"detected": 0, "false_alarms": 0}]
    tr = acc.result()["tracked"]
    assert tr["near"]["detected"] == 2 and tr["false_alarms"] == 2 and tr["fragmentation"] == 1.0


def test_match_boxes_by_hand():
    from csl_ros.eval.instance_match import match_boxes
    labels = np.zeros((40, 40), np.uint8)
    labels[10:20, 10:20] = 1           # component box (10, 10, 20, 20)
    labels[30:40, 30:40] = 255
    labels[0, 39] = 1                  # a 1-pixel component: void at instsize 4
    m = match_instances(np.zeros((40, 40), np.uint16), labels, 4)
    got = match_boxes([(12, 12, 22, 22),      # 64 of 100 px inside the component's box: true
                       (15, 15, 25, 25),      # 25 of 100: false
                       (30, 30, 45, 45),      # clipped to the image: all void, not counted
                       (39, 0, 40, 1),        # only the small (void) component: not counted
                       (-9, -9, -1, -1)], m, labels)
    assert [(c, t) for c, t, _ in got] == [(True, True), (True, False), (False, False), (False, False), (False, False)]
    assert got[0][2] == {int(m.gt[15, 15])}


def test_component_boxes_are_the_components_pixel_extents():
    from csl_ros.eval.instance_match import component_boxes
    rng = np.random.default_rng(3)
    labels = (rng.random((60, 80)) < 0.08).astype(np.uint8)
    labels[5:9, 40:70] = 1
    labels[50:, :10] = 255
    m = match_instances(np.zeros(labels.shape, np.uint16), labels, 3)
    boxes = component_boxes(m)
    assert set(boxes) == {int(c) for c in np.flatnonzero(m.gt_counted)} and len(boxes) >= 1
    for c, box in boxes.items():
        ys, xs = np.nonzero(m.gt == c)
        assert box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_score_sink_cuts_faint_continuations_along_the_frames_regions(monkeypatch, tmp_path):
    """An in-process replay hands the student's regions: the tracker's faint candidates use them, as
    the node does; a source without regions gives none (the score image alone)."""
    import csl_ros.eval.scoring as S

    seen = []
    real = S.faint_candidates

    def spy(scores, regions, config, camera=None, roi=None):
        seen.append(None if regions is None else regions.copy())
        return real(scores, regions, config, camera, roi)

    monkeypatch.setattr(S, "faint_candidates", spy)
    cfg = apply_overrides(DetectorConfig(), {"score_threshold": 0.5, "min_instance_area": 4,
                                             "track_continue_ratio": 0.5})
    labels = np.zeros((32, 48), np.uint8)
    labels[10:20, 10:20] = 1
    anomaly = np.zeros((32, 48), np.float32)
    anomaly[10:20, 10:20] = 0.4
    regions = np.zeros((32, 48), np.int32)
    regions[:, 15:] = 1
    image = np.zeros((32, 48, 3), np.uint8)
    with S.ScoreSink(cfg, cache_dir=tmp_path / "c") as sink:
        sink.add(S.ScoredFrame(0, "a", image, labels, anomaly, regions=regions))
        sink.add(S.ScoredFrame(1, "b", image, labels, anomaly))
    assert len(seen) == 2
    assert np.array_equal(seen[0], regions) and seen[1] is None
