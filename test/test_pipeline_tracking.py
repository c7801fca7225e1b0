"""Tracking across frames on scripted sequences (csl_ros.pipeline.tracking)."""
import numpy as np
import pytest

from csl_ros.config import DetectorConfig, apply_overrides
from csl_ros.pipeline.instances import Obstacle
from csl_ros.pipeline.tracking import Tracker, TrackingParams, association_cost


def _ob(x0, y0=100, size=20, ground=None):
    ob = Obstacle(id=1, area_px=size * size, bbox=(x0, y0, x0 + size, y0 + size), mean_score=0.8, max_score=0.9)
    if ground is not None:
        ob.contact_point_m = (ground[0], 1.5, ground[1])
        ob.distance_m = ground[1]
    return ob


def _oracle_teacher():
    """A teacher whose score map is whatever the test sets in ``.map`` (the Teacher interface)."""
    import torch

    from csl_ros.teachers.teacher import TeacherOutput

    class OracleTeacher:
        model = torch.nn.Identity()
        map = None

        def __call__(self, x, network=None):  # network = its compiled back end, unused
            m = torch.from_numpy(self.map)[None, None].float()
            return TeacherOutput(score_map=m, raw_score=m, logits=None, segmentation=None)

    return OracleTeacher()


def test_obstacle_seen_8_of_10_frames_keeps_one_id_and_a_blip_is_never_confirmed():
    tr = Tracker(TrackingParams.default(confirm_hits=2, confirm_window=3, max_missed=2))
    seen = [1, 1, 0, 1, 1, 1, 0, 1, 1, 1]           # 8 of 10 frames
    ids, confirmed, blip_reports = set(), [], 0
    for k, s in enumerate(seen):
        frame = [_ob(200 + 2 * k)] if s else []      # the obstacle drifts slowly in the image
        if k == 4:
            frame.append(_ob(600, 300))               # a one-frame blip far from it
        out = tr.update(frame)
        for ob in out:
            if ob.bbox[0] == 600:
                blip_reports += ob.confirmed
            else:
                ids.add(ob.id)
                confirmed.append(ob.confirmed)
    assert len(ids) == 1                              # one track id through both gaps
    assert confirmed[0] is False and all(confirmed[1:])   # confirmed at its 2nd sighting, then held
    assert blip_reports == 0                          # the blip never became a confirmed obstacle
    assert [t.id for t in tr.tracks] == list(ids)     # the blip's track is gone


def test_track_is_deleted_after_max_missed_and_a_new_one_gets_a_new_id():
    tr = Tracker(TrackingParams.default(max_missed=1))
    (a,) = tr.update([_ob(100)])
    tr.update([])                                     # missed once: kept
    assert len(tr.tracks) == 1
    tr.update([])                                     # missed twice: deleted
    assert tr.tracks == []
    (b,) = tr.update([_ob(100)])
    assert b.id != a.id and b.track_age == 0


def test_one_of_one_reports_every_detection_at_once_like_per_frame_output():
    tr = Tracker()                                    # the schema's defaults: 1 of 1, deleted at a miss
    assert TrackingParams.from_config(DetectorConfig()).is_per_frame
    for k in range(4):
        frame = [_ob(100 + k), _ob(400 + 50 * (k % 2), 300)]
        out = tr.update(frame)
        assert len(out) == 2 and all(o.confirmed for o in out)
    ages = sorted(o.track_age for o in out)
    assert ages[1] == 3                               # the steady obstacle aged with one id


def test_ground_association_uses_contact_points_when_known():
    p = TrackingParams.default(gate_m=2.0)
    a, b = _ob(100, ground=(0.0, 20.0)), _ob(500, ground=(0.5, 19.0))   # far apart in the image
    assert association_cost(a, b, p) == pytest.approx(np.hypot(0.5, 1.0) / 3.8)  # gate = 20 % of 19 m
    assert association_cost(a, _ob(100, ground=(6.0, 20.0)), p) is None          # same box, 6 m aside
    tr = Tracker(p)
    first = tr.update([a])[0].id
    assert tr.update([b])[0].id == first


def test_confirm_hits_above_window_is_refused_by_the_schema():
    with pytest.raises(ValueError, match="track_confirm_hits"):
        apply_overrides(DetectorConfig(), {"track_confirm_hits": 3, "track_confirm_window": 2}).validate()


def test_detector_calls_are_one_tracked_stream_and_detect_batch_is_stateless():
    from csl_ros.pipeline import Detector

    teacher = _oracle_teacher()
    cfg = apply_overrides(DetectorConfig(), {"scheme": "teacher_only", "teacher": "msp", "input_height": 64,
                                             "input_width": 128, "device": "cpu", "backend": "eager",
                                             "min_instance_area": 1, "track_confirm_hits": 2,
                                             "track_confirm_window": 3, "track_max_missed": 1})
    det = Detector(cfg, teacher=teacher)
    teacher.map = np.zeros((64, 128), np.float32)
    teacher.map[30:40, 50:60] = 1.0
    image = np.zeros((64, 128, 3), np.uint8)
    det.warmup()                                   # warm-up frames are not part of the stream
    first = det(image)
    assert first.obstacles == [] and len(first.tentative) == 1   # seen once: not reported yet
    second = det(image)
    assert [o.id for o in second.obstacles] == [first.tentative[0].id] and second.obstacles[0].track_age == 1
    assert second.obstacles[0].to_dict()["track_age"] == 1 and second.obstacles[0].instance == 1
    assert len(det.detect_batch([image])[0].obstacles) == 1     # stateless: every record reported


def test_track_ids_and_ages_reach_markers_points_and_json():
    from csl_ros.ros.markers import obstacle_marker_specs, obstacle_points

    tr = Tracker()
    for k in range(3):
        (ob,) = tr.update([_ob(100, ground=(0.2, 12.0 - k))])
    ob.width_m = ob.height_m = 0.5
    assert ob.id == 1 and ob.track_age == 2
    cube, text = obstacle_marker_specs([ob])
    assert cube.id == text.id == 1 and "#1" in text.text and "age 2" in text.text
    assert obstacle_points([ob])[0][3] == 1 and obstacle_points([ob])[0][7] == 2   # ~/obstacle_points id, age
    d = ob.to_dict()
    assert (d["id"], d["track_age"], d["track_hits"], d["confirmed"], d["instance"]) == (1, 2, 1, True, 0)


def test_coasting_reports_a_missed_confirmed_track_at_its_predicted_place_until_deleted():
    tr = Tracker(TrackingParams.default(max_missed=2, coast=True))
    # a static obstacle approached at 1 m per frame: box moves 4 px right and down, grows 2 px a frame
    frames = [[_ob(100 + 4 * k, 100 + 4 * k, 20 + 2 * k, ground=(0.5, 20.0 - k))] for k in range(3)]
    for f in frames:
        (ob,) = tr.update(f)
        assert ob.coasted == 0
    (ghost,) = tr.update([])                          # missed once: still reported, one frame on
    assert ghost.coasted == 1 and ghost.confirmed and ghost.id == ob.id
    assert ghost.bbox == (112, 112, 138, 138)         # (108, 108, 132, 132) + velocity (4, 4, 6, 6)
    assert ghost.distance_m == pytest.approx(17.0) and ghost.contact_point_m[2] == pytest.approx(17.0)
    (ghost,) = tr.update([])                          # missed twice: two frames on
    assert ghost.coasted == 2 and ghost.bbox == (116, 116, 144, 144) and ghost.distance_m == pytest.approx(16.0)
    assert tr.update([]) == [] and tr.tracks == []    # missed three times: deleted, nothing reported


def test_coasting_off_or_unconfirmed_reports_nothing_for_a_missed_track():
    for params in (TrackingParams.default(max_missed=2),                       # coast off
                   TrackingParams.default(max_missed=2, coast=True, confirm_hits=2, confirm_window=2)):
        tr = Tracker(params)
        tr.update([_ob(100)])                         # seen once: (2 of 2) not confirmed yet
        assert tr.update([]) == [] and len(tr.tracks) == 1


def test_track_reacquired_after_a_gap_uses_the_gap_as_the_velocity_time_base():
    tr = Tracker(TrackingParams.default(max_missed=2, coast=True))
    tr.update([_ob(100, ground=(0.0, 20.0))])
    tr.update([])                                      # missed: coasts in place (no velocity yet)
    tr.update([_ob(110, ground=(0.0, 18.0))])          # 10 px and 2 m over two frames
    (ghost,) = tr.update([])
    assert ghost.bbox[0] == 115 and ghost.distance_m == pytest.approx(17.0)


def test_coasted_prediction_past_the_camera_is_not_reported():
    tr = Tracker(TrackingParams.default(max_missed=3, coast=True))
    tr.update([_ob(100, ground=(0.0, 2.0))])
    tr.update([_ob(100, ground=(0.0, 1.0))])
    assert tr.update([]) == []                        # predicted at 0 m: passed under the bonnet
    assert len(tr.tracks) == 1                        # the track itself lives until max_missed


def test_detector_reports_a_coasted_obstacle_when_it_flickers_out_and_its_marker_says_so():
    from csl_ros.pipeline import Detector
    from csl_ros.ros.markers import obstacle_marker_specs, obstacle_points
    from csl_ros.visualize import obstacle_label

    teacher = _oracle_teacher()
    cfg = apply_overrides(DetectorConfig(), {"scheme": "teacher_only", "teacher": "msp", "input_height": 64,
                                             "input_width": 128, "device": "cpu", "backend": "eager",
                                             "min_instance_area": 1, "track_max_missed": 1, "track_coast": True})
    det = Detector(cfg, teacher=teacher)
    image = np.zeros((64, 128, 3), np.uint8)
    teacher.map = np.zeros((64, 128), np.float32)
    teacher.map[30:40, 50:60] = 1.0
    (seen,) = det(image).obstacles
    teacher.map = np.zeros((64, 128), np.float32)              # the obstacle flickers out
    out = det(image)
    assert not out.instances.any()                              # no pixels this frame ...
    (ghost,) = out.obstacles                                    # ... but its track is reported
    assert (ghost.id, ghost.coasted, ghost.instance, ghost.bbox) == (seen.id, 1, 0, seen.bbox)
    assert det(image).obstacles == []                           # missed twice: deleted
    ghost.contact_point_m, ghost.distance_m, ghost.width_m, ghost.height_m = (0.0, 1.5, 9.0), 9.0, 0.5, 0.5
    assert "coasted 1" in obstacle_marker_specs([ghost])[1].text
    assert obstacle_label(ghost).endswith("coasted 1") and not obstacle_label(seen).endswith("coasted 1")
    assert obstacle_points([ghost])[0][3] == seen.id and obstacle_points([ghost])[0][8] == 1   # id, coasted


def _faint(x0, y0=100, size=20):
    ob = _ob(x0, y0, size)
    ob.mean_score, ob.max_score, ob.faint, ob.instance = 0.06, 0.08, True, 0
    return ob


def test_confirmed_track_continues_on_a_faint_instance_and_faint_ones_never_start_a_track():
    """ByteTrack's second association: 1 of 1, deleted after 0 missed (per-frame output): an obstacle
    whose score dips below the threshold for two frames keeps its id on the faint instances there; a faint
    instance with no confirmed track near it is never reported, nor one beside an unconfirmed track."""
    tr = Tracker(TrackingParams.default(confirm_hits=1, confirm_window=1, max_missed=0))
    (a,) = tr.update([_ob(200)])
    ids = [a.id]
    for k in (1, 2):
        out = tr.update([], candidates=[_faint(200 + 2 * k), _faint(700, 300)])
        assert len(out) == 1 and out[0].faint and out[0].confirmed and out[0].bbox[0] == 200 + 2 * k
        ids.append(out[0].id)
    (b,) = tr.update([_ob(206)])                      # seen at full score again
    assert len(set(ids + [b.id])) == 1 and not b.faint
    assert tr.update([], candidates=[]) == [] and tr.tracks == []   # without it: deleted at once
    assert tr.update([], candidates=[_faint(206)]) == []             # a faint one alone starts nothing
    k_of_n = Tracker(TrackingParams.default(confirm_hits=2, confirm_window=3, max_missed=2))
    (c,) = k_of_n.update([_ob(400)])
    assert not c.confirmed and k_of_n.update([], candidates=[_faint(400)]) == []


def test_a_detection_wins_over_a_faint_instance_for_the_same_track():
    tr = Tracker(TrackingParams.default(confirm_hits=1, confirm_window=1, max_missed=0))
    tr.update([_ob(200)])
    out = tr.update([_ob(202)], candidates=[_faint(201)])
    assert len(out) == 1 and not out[0].faint


def test_detector_continues_a_reported_obstacle_on_a_faint_area_and_its_marker_says_so():
    from csl_ros.pipeline import Detector
    from csl_ros.ros.markers import obstacle_marker_specs
    from csl_ros.visualize import obstacle_label

    teacher = _oracle_teacher()
    cfg = apply_overrides(DetectorConfig(), {"scheme": "teacher_only", "teacher": "msp", "input_height": 64,
                                             "input_width": 128, "device": "cpu", "backend": "eager",
                                             "min_instance_area": 1, "score_threshold": 0.5,
                                             "track_continue_ratio": 0.5})
    det = Detector(cfg, teacher=teacher)
    image = np.zeros((64, 128, 3), np.uint8)
    teacher.map = np.zeros((64, 128), np.float32)
    teacher.map[30:40, 50:60] = 0.9
    first = det(image)
    (seen,) = first.obstacles
    t = first.timings_ms                                         # the tracking stage is timed, in the total
    assert t["tracking"] >= 0 and t["total"] == pytest.approx(sum(v for k, v in t.items() if k != "total"))
    teacher.map[30:40, 50:60] = 0.3                              # below the threshold, above half of it
    out = det(image)
    assert not out.instances.any()                              # no instance this frame ...
    (faint,) = out.obstacles                                    # ... but its track goes on, on the faint area
    assert (faint.id, faint.faint, faint.instance, faint.bbox) == (seen.id, True, 0, seen.bbox)
    assert faint.to_dict()["faint"] is True
    faint.contact_point_m, faint.distance_m, faint.width_m, faint.height_m = (0.0, 1.5, 9.0), 9.0, 0.5, 0.5
    assert obstacle_marker_specs([faint])[1].text.endswith("faint") and obstacle_label(faint).endswith("faint")
    teacher.map[30:40, 50:60] = 0.2                              # below half the threshold: deleted
    assert det(image).obstacles == []
    teacher.map[30:40, 50:60] = 0.3                              # a faint area alone starts nothing
    assert det(image).obstacles == []
