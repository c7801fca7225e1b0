"""Instance extraction and flat-ground geometry (hand-made cases)."""
import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest

from csl_ros.pipeline.geometry import CameraGeometry
from csl_ros.config import DetectorConfig
from csl_ros.pipeline.instances import describe_instances, extract_instances, obstacles_of


def test_components_are_split_by_regions_and_filtered_by_area():
    s = np.zeros((10, 12), np.float32)
    s[1:4, 1:7] = 0.9          # one blob spanning regions 1 and 2
    s[7:9, 9:11] = 0.8         # a small blob (4 px) in region 3
    s[6, 0] = 0.95             # a single pixel
    regions = np.zeros((10, 12), np.int64)
    regions[:, 4:] = 2
    regions[5:, :] = 3
    inst = extract_instances(s, regions, threshold=0.5, min_area=4)
    assert inst.dtype == np.uint16
    ids = sorted(set(np.unique(inst)) - {0})
    assert len(ids) == 3       # blob split in two, small blob kept (area 4), single pixel dropped
    assert len(set(np.unique(inst[1:4, 1:4]))) == 1 and len(set(np.unique(inst[1:4, 4:7]))) == 1
    assert inst[1, 1] != inst[1, 5]
    assert inst[6, 0] == 0
    assert extract_instances(s, regions, 0.5, 5)[7:9, 9:11].max() == 0
    # without regions the blob stays whole; threshold is inclusive
    assert len(set(np.unique(extract_instances(s, None, 0.9, 1))) - {0}) == 2


def test_roi_keeps_only_instances_touching_it():
    s = np.zeros((8, 8), np.float32)
    s[0:2, 0:2] = 1
    s[5:7, 5:7] = 1
    roi = np.zeros((8, 8), bool)
    roi[4:, 4:] = True
    inst = extract_instances(s, None, 0.5, 1, roi=roi)
    assert inst[0, 0] == 0 and inst[5, 5] == 1


def test_no_detection_gives_empty_results():
    inst = extract_instances(np.zeros((5, 5), np.float32), np.zeros((5, 5), np.int64), 0.5, 1)
    assert inst.max() == 0 and describe_instances(inst, np.zeros((5, 5))) == []


def test_records_and_ground_projection_by_hand():
    cam = CameraGeometry(fx=1000.0, fy=1000.0, cx=500.0, cy=200.0, height_m=1.5, pitch_deg=0.0)
    inst = np.zeros((400, 1000), np.uint16)
    # an object whose bottom edge is at row 250 (50 px below the horizon): Z = 1000*1.5/50 = 30 m
    inst[230:250, 490:510] = 1
    scores = np.where(inst > 0, 0.8, 0.0).astype(np.float32)
    scores[235, 495] = 0.95
    (ob,) = describe_instances(inst, scores, cam)
    assert ob.area_px == 400 and ob.bbox == (490, 230, 510, 250)
    assert ob.max_score == pytest.approx(0.95) and ob.mean_score == pytest.approx((399 * 0.8 + 0.95) / 400)
    assert ob.distance_m == pytest.approx(30.0, rel=1e-6)
    x, y, z = ob.contact_point_m
    assert z == pytest.approx(30.0) and y == pytest.approx(1.5) and abs(x) < 0.05
    assert ob.width_m == pytest.approx(20 * 30 / 1000) and ob.height_m == pytest.approx(20 * 30 / 1000)


def test_max_obstacle_height_drops_instances_taller_than_it_at_their_distance():
    """Three instances on a camera 1.5 m over flat ground (f = 1000 px, horizon at row 200); heights by
    hand: bottom row 250 -> 30 m, so 20 px tall = 0.6 m and 150 px tall = 4.5 m; bottom row 400
    (200 px below the horizon) -> 7.5 m, so 300 px tall = 2.25 m."""
    cam = CameraGeometry(fx=1000.0, fy=1000.0, cx=500.0, cy=200.0, height_m=1.5, pitch_deg=0.0)
    scores = np.zeros((400, 1000), np.float32)
    scores[230:250, 100:120] = 0.9      # 0.6 m at 30 m: a box on the road
    scores[100:250, 400:600] = 0.9      # 4.5 m at 30 m: the far end of the road and the scenery behind it
    scores[100:400, 800:820] = 0.9      # 2.25 m at 7.5 m
    off = DetectorConfig(score_threshold=0.5, min_instance_area=10, max_obstacle_height_m=0.0)
    inst, obs = obstacles_of(scores, None, off, cam)
    assert sorted(round(o.height_m, 3) for o in obs) == [0.6, 2.25, 4.5]
    three_m = DetectorConfig(score_threshold=0.5, min_instance_area=10, max_obstacle_height_m=3.0)
    inst, obs = obstacles_of(scores, None, three_m, cam)
    # the 4.5 m one is gone from the records and the label image; the rest are renumbered 1..2
    assert [o.id for o in obs] == [o.instance for o in obs] == [1, 2]
    assert sorted(round(o.height_m, 3) for o in obs) == [0.6, 2.25]
    assert inst.max() == 2 and not inst[150, 500] and inst[240, 110] and inst[300, 810]
    for o in obs:   # each record still describes its own pixels
        ys, xs = np.nonzero(inst == o.instance)
        assert o.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) and o.area_px == ys.size
    two_m = DetectorConfig(score_threshold=0.5, min_instance_area=10, max_obstacle_height_m=2.0)
    assert [round(o.height_m, 3) for o in obstacles_of(scores, None, two_m, cam)[1]] == [0.6]
    # without camera geometry there is no metric height: nothing is dropped
    inst, obs = obstacles_of(scores, None, two_m, None)
    assert len(obs) == 3 and inst.max() == 3


def test_max_obstacle_distance_drops_instances_beyond_the_range():
    """The same camera (f = 1000 px, 1.5 m, horizon at row 200): bottom row 250 -> 30 m, row 400 ->
    7.5 m, row 215 -> 100 m (1.5 * 1000 / 15)."""
    cam = CameraGeometry(fx=1000.0, fy=1000.0, cx=500.0, cy=200.0, height_m=1.5, pitch_deg=0.0)
    scores = np.zeros((400, 1000), np.float32)
    scores[230:250, 100:120] = 0.9      # 30 m
    scores[380:400, 800:820] = 0.9      # 7.5 m
    scores[205:215, 400:420] = 0.9      # 100 m
    base = DetectorConfig(score_threshold=0.5, min_instance_area=10)
    assert sorted(round(o.distance_m, 1) for o in obstacles_of(scores, None, base, cam)[1]) == [7.5, 30.0, 100.0]
    inst, obs = obstacles_of(scores, None, dataclasses.replace(base, max_obstacle_distance_m=50.0), cam)
    assert sorted(round(o.distance_m, 1) for o in obs) == [7.5, 30.0]
    assert [o.id for o in obs] == [o.instance for o in obs] == [1, 2] and inst.max() == 2 and not inst[210, 410]
    close = dataclasses.replace(base, max_obstacle_distance_m=20.0)
    assert [round(o.distance_m, 1) for o in obstacles_of(scores, None, close, cam)[1]] == [7.5]
    assert len(obstacles_of(scores, None, close, None)[1]) == 3   # no geometry, no distance: all kept


def test_max_obstacle_distance_drops_instances_above_the_horizon():
    """With camera geometry, an instance whose bottom row lies above the horizon (row 200) has no
    ground contact (distance None): beyond any range, so the range drops it; without the range, or
    without geometry, it is kept."""
    cam = CameraGeometry(fx=1000.0, fy=1000.0, cx=500.0, cy=200.0, height_m=1.5, pitch_deg=0.0)
    scores = np.zeros((400, 1000), np.float32)
    scores[150:180, 100:130] = 0.9      # bottom row 179: above the horizon
    scores[380:400, 800:820] = 0.9      # 7.5 m
    base = DetectorConfig(score_threshold=0.5, min_instance_area=10)
    obs = obstacles_of(scores, None, base, cam)[1]
    assert sorted((o.distance_m is None, o.bbox[1]) for o in obs) == [(False, 380), (True, 150)]
    ranged = dataclasses.replace(base, max_obstacle_distance_m=35.0)
    inst, obs = obstacles_of(scores, None, ranged, cam)
    assert [(o.id, round(o.distance_m, 1)) for o in obs] == [(1, 7.5)] and inst.max() == 1 and not inst[160, 110]
    assert len(obstacles_of(scores, None, ranged, None)[1]) == 2


def test_first_row_within_the_range_by_hand():
    """f = 1000 px, 1.5 m, horizon at row 200: the bottom edge of row v meets the road at
    1500 / (v + 1 - 200) m, so 30 m is first reached by row 249 (edge 250), 7.5 m by row 399."""
    cam = CameraGeometry(fx=1000.0, fy=1000.0, cx=500.0, cy=200.0, height_m=1.5, pitch_deg=0.0)
    assert cam.first_row_within(30.0, 400) == 249
    assert cam.first_row_within(7.5, 400) == 399
    assert cam.first_row_within(7.0, 400) == 400          # no row of the image is that close
    assert cam.first_row_within(1e9, 400) == 200          # rows at or above the horizon never meet the road
    _, d = cam.ground_point(500.0, 249 + 1.0)
    assert d == pytest.approx(30.0)


def test_output_range_acts_on_region_pieces_before_instances_form():
    """A near obstacle (rows 230-249: contact at 30 m) whose anomalous area runs up into a far band right
    above it (rows 205-229, another student region: bottom edge 230 = 50 m) ten times its size: as one
    component the band swallows it (a piece under min_split_fraction joins the largest), and the one
    instance is band plus obstacle, placed at the obstacle's contact point, inside a 35 m range. With the
    range acting on the pieces first, the band's piece goes, and the obstacle is an instance of its own.
    The band alone, and everything without geometry or without a range, is as before."""
    cam = CameraGeometry(fx=1000.0, fy=1000.0, cx=500.0, cy=200.0, height_m=1.5, pitch_deg=0.0)
    scores = np.zeros((400, 1000), np.float32)
    scores[205:230, 300:700] = 0.9      # the far band: region 1
    scores[230:250, 470:500] = 0.9      # the obstacle below it: region 2
    regions = np.ones((400, 1000), np.int64)
    regions[230:, :] = 2
    base = DetectorConfig(score_threshold=0.5, min_instance_area=10, min_split_fraction=0.4)
    ranged = dataclasses.replace(base, max_obstacle_distance_m=35.0)
    merged = obstacles_of(scores, regions, base, cam)[1]
    assert [(o.area_px, round(o.distance_m, 1)) for o in merged] == [(25 * 400 + 20 * 30, 30.0)]
    inst, obs = obstacles_of(scores, regions, ranged, cam)
    assert [(o.area_px, o.bbox, round(o.distance_m, 1)) for o in obs] == [(600, (470, 230, 500, 250), 30.0)]
    assert inst[240, 480] == obs[0].instance == 1 and not inst[210, 400]
    assert extract_instances(scores, regions, 0.5, 10, min_bottom_row=249).astype(bool).sum() == 600
    # the band alone is dropped whole, as the instance-level range did; no geometry: nothing changes
    band = np.where(np.arange(400)[:, None] < 230, scores, 0.0).astype(np.float32)
    assert obstacles_of(band, regions, ranged, cam)[1] == []
    assert np.array_equal(obstacles_of(scores, regions, ranged, None)[0], obstacles_of(scores, regions, base, None)[0])
    # without regions the pieces are the components: a near component touching the band stays whole
    whole = extract_instances(scores, None, 0.5, 10, min_bottom_row=249)
    assert whole[210, 400] > 0 and whole[210, 400] == whole[240, 480]


def test_pitch_moves_the_horizon():
    cam = CameraGeometry(1000.0, 1000.0, 500.0, 200.0, height_m=1.5, pitch_deg=5.0)
    # the horizon is now tan(5 deg)*f above the principal point
    v_h = 200 - 1000 * math.tan(math.radians(5))
    assert np.isnan(cam.ground_point(500, v_h - 1)[1])
    _, d = cam.ground_point(500, 200.0)  # the optical axis hits the ground at h / tan(pitch)
    assert d == pytest.approx(1.5 / math.tan(math.radians(5)), rel=1e-9)
    with pytest.raises(ValueError, match="focal"):
        CameraGeometry.from_K([0, 0, 1, 0, 0, 1, 0, 0, 1])


def test_camera_geometry_from_camera_info_message_or_bag_dict():
    """One rule for the node (a CameraInfo message) and the evaluator (the bag reader's dict): the same
    camera, scaled to the image when camera_info describes the full sensor; no calibration -> None."""
    k = [1000.0, 0.0, 640.0, 0.0, 1100.0, 360.0, 0.0, 0.0, 1.0]
    msg = SimpleNamespace(k=k, width=1280, height=720)
    info = {"fx": 1000.0, "fy": 1100.0, "cx": 640.0, "cy": 360.0, "width": 1280, "height": 720}
    full = CameraGeometry.from_camera_info(msg, (720, 1280, 3), height_m=1.2, pitch_deg=3.0)
    assert full == CameraGeometry(1000.0, 1100.0, 640.0, 360.0, 1.2, 3.0)
    assert CameraGeometry.from_camera_info(info, (720, 1280), 1.2, 3.0) == full
    half = CameraGeometry.from_camera_info(msg, (360, 640, 3), height_m=1.2, pitch_deg=3.0)
    assert half == CameraGeometry(500.0, 550.0, 320.0, 180.0, 1.2, 3.0)
    assert CameraGeometry.from_camera_info(info, (360, 640), 1.2, 3.0) == half
    unsized = CameraGeometry.from_camera_info(SimpleNamespace(k=k, width=0, height=0), (360, 640))
    assert (unsized.fx, unsized.cx) == (1000.0, 640.0)      # no size given: taken as the image's own
    assert CameraGeometry.from_camera_info(None, (720, 1280)) is None
    assert CameraGeometry.from_camera_info(SimpleNamespace(k=[0.0] * 9, width=1280, height=720), (720, 1280)) is None
    assert CameraGeometry.from_camera_info({"fx": 0, "fy": 0, "cx": 0, "cy": 0}, (720, 1280)) is None


def test_ground_contact_distance_on_synthroad_obstacles():
    """Instances + flat-ground geometry through the Detector on synthroad frames, with an oracle
    teacher (the ground-truth OOD mask as score), so only the pipeline's geometry is tested."""
    import torch

    from csl_ros.config import DetectorConfig
    from csl_ros.data.synthroad import render_frame
    from csl_ros.pipeline import Detector
    from csl_ros.teachers.teacher import TeacherOutput

    class OracleTeacher:
        model = torch.nn.Identity()

        def __init__(self):
            self.map = None

        def __call__(self, x, network=None):  # the Teacher interface: network = its compiled back end
            m = torch.from_numpy(self.map)[None, None].float()
            return TeacherOutput(score_map=m, raw_score=m, logits=None, segmentation=None)

    H, W = 256, 512
    teacher = OracleTeacher()
    det = Detector(DetectorConfig(scheme="teacher_only", teacher="msp", input_height=H, input_width=W,
                                  device="cpu", backend="eager", min_instance_area=1), teacher=teacher)
    checked = 0
    for seed in range(40):
        frame = render_frame(seed, (H, W), obstacles="obstacle")
        teacher.map = (frame.ood_labels == 1).astype(np.float32)
        c = frame.camera
        cam = CameraGeometry.from_K(c.K, height_m=c.height_m, pitch_deg=c.pitch_deg)
        out = det(frame.image, cam)
        for ob in frame.obstacles:
            if not 5.0 <= ob["distance_m"] <= 40.0:
                continue
            ids = np.unique(out.instances[frame.instance_ids == ob["instance_id"]])
            ids = ids[ids > 0]
            if len(ids) != 1:  # occluded or merged with a neighbour: no single instance to measure
                continue
            rec = next(o for o in out.obstacles if o.instance == ids[0])
            assert rec.distance_m == pytest.approx(ob["distance_m"], rel=0.10), (seed, ob)
            checked += 1
    assert checked >= 15


def test_regions_never_fragment_one_connected_area():
    s = np.zeros((20, 40), np.float32)
    s[2:12, 2:22] = 0.9          # one obstacle (200 px) crossed by region boundaries
    regions = np.zeros((20, 40), np.int64)
    regions[:, 5:] = 1           # a 30 px sliver (15 %) on the left
    regions[:, 20:] = 2          # a 20 px sliver (10 %) on the right
    frag = extract_instances(s, regions, 0.5, 10)                          # plain split: 3 fragments
    assert len(set(np.unique(frag)) - {0}) == 3
    whole = extract_instances(s, regions, 0.5, 10, min_split_fraction=0.25)
    assert set(np.unique(whole)) == {0, 1} and (whole > 0).sum() == 200   # one instance, no hole
    # two touching obstacles of 100 px each in two regions stay two instances
    t = np.zeros((20, 40), np.float32)
    t[2:12, 2:22] = 0.9
    two = np.where(np.arange(40)[None, :] < 12, 1, 2) * np.ones((20, 1), np.int64)
    assert len(set(np.unique(extract_instances(t, two, 0.5, 10, min_split_fraction=0.25))) - {0}) == 2
    # pieces below min_area join the obstacle instead of leaving a hole
    assert (extract_instances(s, regions, 0.5, 25) > 0).sum() == 200


def test_hysteresis_keeps_faint_areas_only_where_they_reach_the_threshold():
    """score_hysteresis 0.5 at threshold 0.4: the area >= 0.2 around a peak >= 0.4 is one instance (its
    faint rim included); an area >= 0.2 that never reaches 0.4 is none; 1 is the single threshold."""
    s = np.zeros((20, 30), np.float32)
    s[2:10, 2:10] = 0.3          # faint body ...
    s[5:7, 5:7] = 0.5            # ... with a peak: one 64-px instance with hysteresis, 4 px without
    s[12:18, 15:25] = 0.3        # faint only: never an instance
    s[2:4, 20:22] = 0.45         # a small strong blob alone
    single = extract_instances(s, None, 0.4, 1)
    assert sorted(np.bincount(single.ravel())[1:].tolist()) == [4, 4]
    hyst = extract_instances(s, None, 0.4, 1, low_threshold=0.2)
    assert sorted(np.bincount(hyst.ravel())[1:].tolist()) == [4, 64]
    assert hyst[12:18, 15:25].max() == 0
    assert np.array_equal(extract_instances(s, None, 0.4, 1, low_threshold=0.4), single)
    cfg = dataclasses.replace(DetectorConfig(), score_threshold=0.4, score_hysteresis=0.5, min_instance_area=10,
                              max_obstacle_distance_m=0.0, max_obstacle_height_m=0.0)
    inst, records = obstacles_of(s, None, cfg)
    assert [r.area_px for r in records] == [64]     # the small strong blob is under min_instance_area
    assert not extract_instances(np.full((4, 4), 0.3, np.float32), None, 0.4, 1, low_threshold=0.2).any()


def test_faint_candidates_are_the_areas_between_the_two_thresholds():
    from csl_ros.pipeline.instances import faint_candidates

    s = np.zeros((20, 30), np.float32)
    s[2:10, 2:10] = 0.3          # faint: a candidate
    s[12:18, 15:25] = 0.3
    s[14:16, 18:20] = 0.5        # reaches the threshold: a detection, not a candidate
    cfg = dataclasses.replace(DetectorConfig(), score_threshold=0.4, track_continue_ratio=0.5, min_instance_area=10,
                              max_obstacle_distance_m=0.0, max_obstacle_height_m=0.0)
    (c,) = faint_candidates(s, None, cfg)
    assert c.faint and c.instance == 0 and c.area_px == 64 and c.bbox == (2, 2, 10, 10)
    assert faint_candidates(s, None, dataclasses.replace(cfg, track_continue_ratio=1.0)) == []
    assert faint_candidates(s, None, dataclasses.replace(cfg, min_instance_area=100)) == []
