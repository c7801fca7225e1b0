"""bench/driving.py: the rule that picks the shipped threshold and tracking."""
import math

from bench_modules import load_bench


def _load():
    return load_bench("driving")


def _results(points):
    return {name: (None, {"tracked": {"near": {"recall": r}, "false_alarms_per_frame": fa}})
            for name, (r, fa) in points.items()}


def test_choose_takes_the_best_recall_within_the_false_alarm_budget():
    choose = _load().choose
    res = _results({"a": (0.9, 0.5), "b": (0.6, 0.15), "c": (0.7, 0.1), "d": (0.7, 0.05)})
    name, rule = choose(res, 0.15, reference=(0.2, 2.0))
    assert name == "d" and "<= 0.15" in rule     # equal recall: fewer false alarms


def test_choose_falls_back_to_fewest_false_alarms_without_losing_recall():
    choose = _load().choose
    res = _results({"more recall": (0.45, 1.3), "fewest fa": (0.30, 0.7), "too little recall": (0.10, 0.2),
                    "same fa, less recall": (0.25, 0.7)})
    name, rule = choose(res, 0.15, reference=(0.28, 1.5))
    assert name == "fewest fa" and "fewest false alarms" in rule
    assert choose(res, 0.15, reference=(0.9, 1.5)) == (None, "no setting qualifies")
    # a setting that finds nothing has no false alarms either: never chosen for its budget
    silent = _results({"finds nothing": (0.0, 0.0), "some": (0.3, 0.9)})
    assert choose(silent, 0.15, reference=(0.2, 1.5))[0] == "some"
    assert choose(res, 0.15)[0] is None


def test_the_driving_header_names_the_second_pass():
    driving = _load()
    assert driving._second_pass({"input_size": [256, 512], "test_scale": 2.0}) == \
        " with a second pass at test_scale 2 (512x1024)"
    assert driving._second_pass({"input_size": [256, 512], "test_scale": 1.0}) == ""
    assert driving._second_pass({"input_size": [256, 512]}) == ""      # a JSON from before test_scale


def test_the_driving_header_names_the_height_and_range_limits():
    driving = _load()
    assert driving._max_height({"max_obstacle_height_m": 2.0}) == \
        "instances taller than 2 m at their contact point's distance dropped, "
    assert driving._max_height({"max_obstacle_height_m": 2.0, "max_obstacle_distance_m": 50.0}).endswith(
        "dropped, instances beyond 50 m not reported, ")
    assert driving._max_height({"max_obstacle_distance_m": 0.0}) == driving._max_height({}) == ""


def test_the_tuning_grid_takes_the_given_thresholds():
    import pytest

    from csl_ros.config import DetectorConfig
    driving = _load()
    grid = driving.settings_grid(DetectorConfig(), tune=True, thresholds=(0.5, 0.9))
    assert {cfg.score_threshold for cfg in grid.values()} == {0.5, 0.9}
    assert len(grid) == 2 * len(driving.MIN_AREAS) * len(driving.TRACKING) * len(driving.MAX_HEIGHTS)
    assert driving._floats("0.5,0.9", "--thresholds") == (0.5, 0.9)
    for bad in ("0.5,x", "1.5", ""):
        with pytest.raises(SystemExit, match="--thresholds"):
            driving._floats(bad, "--thresholds")


def test_the_tuning_grid_takes_the_given_output_ranges():
    import pytest

    from csl_ros.config import DetectorConfig
    driving = _load()
    grid = driving.settings_grid(DetectorConfig(), tune=True, thresholds=(0.5,), max_distances=(0.0, 40.0))
    assert {cfg.max_obstacle_distance_m for cfg in grid.values()} == {0.0, 40.0}
    assert sum(name.endswith(", range 40 m") for name in grid) == len(grid) // 2
    assert driving._floats("0,40", "--max-distances", upper=math.inf) == (0.0, 40.0)
    only = driving.settings_grid(DetectorConfig(), tune=True, thresholds=(0.5,), max_heights=(0.0,))
    assert {cfg.max_obstacle_height_m for cfg in only.values()} == {0.0} and len(only) == len(grid) // 2 // 3
    with pytest.raises(SystemExit, match=r"--max-distances: every value must lie in \[0, inf\]"):
        driving._floats("-5", "--max-distances", upper=math.inf)


def test_the_tuning_grid_takes_the_given_instance_sizes():
    import pytest

    from csl_ros.config import DetectorConfig
    driving = _load()
    grid = driving.settings_grid(DetectorConfig(), tune=True, thresholds=(0.5,), max_heights=(0.0,),
                                 min_areas=(30, 60, 100))
    assert {cfg.min_instance_area for cfg in grid.values()} == {30, 60, 100}
    assert len(grid) == 3 * len(driving.TRACKING)
    assert driving._pixel_counts("30,60", "--min-areas") == (30, 60)
    for bad in ("30.5", "0", "-3", "x"):
        with pytest.raises(SystemExit, match="--min-areas"):
            driving._pixel_counts(bad, "--min-areas")


def test_the_tuning_grid_takes_the_given_hysteresis():
    from csl_ros.config import DetectorConfig
    driving = _load()
    grid = driving.settings_grid(DetectorConfig(), tune=True, thresholds=(0.5,), max_heights=(0.0,),
                                 min_areas=(60,), hysteresis=(1.0, 0.5))
    assert {cfg.score_hysteresis for cfg in grid.values()} == {1.0, 0.5}
    assert len(grid) == 2 * len(driving.TRACKING)
    # one threshold keeps the names of the grids before hysteresis existed
    assert sum(", hysteresis 0.5," in name for name in grid) == len(driving.TRACKING)
    assert not any("hysteresis 1" in name for name in grid)


def test_detect_cached_keeps_the_road_roi(tmp_path):
    import numpy as np

    from csl_ros.config import DetectorConfig
    from csl_ros.pipeline.detector import Detection
    driving = _load()
    roi = np.zeros((4, 6), bool)
    roi[2:, 1:4] = True

    class Once:   # a detector that may run only once: the second call must come from the cache
        calls = 0

        def detect_batch(self, images):
            self.calls += 1
            assert self.calls == 1
            return [Detection(np.full((4, 6), 0.5, np.float32), np.zeros((4, 6), np.uint16), [],
                              regions=np.ones((4, 6), np.int32), road_roi=roi)]

    class Rec:
        rgb = np.zeros((4, 6, 3), np.uint8)

    det, cfg = Once(), DetectorConfig(road_roi=True)
    for _ in range(2):
        anomaly, regions, got = driving.detect_cached(det, Rec(), cfg, tmp_path, "k")
        np.testing.assert_array_equal(got, roi)
        assert anomaly.shape == regions.shape == (4, 6)
    assert len(list(tmp_path.rglob("*.npz"))) == 1


def test_detect_cached_keys_on_every_setting_that_may_change_the_maps(tmp_path):
    import dataclasses

    import numpy as np

    from csl_ros.config import AFTER_MAP_FIELDS, DetectorConfig, apply_overrides
    from csl_ros.pipeline.detector import Detection
    driving = _load()
    names = {f.name for f in dataclasses.fields(DetectorConfig)}
    assert AFTER_MAP_FIELDS <= names

    class Counting:
        calls = 0

        def detect_batch(self, images):
            self.calls += 1
            return [Detection(np.full((4, 6), 0.5, np.float32), np.zeros((4, 6), np.uint16), [],
                              regions=np.ones((4, 6), np.int32))]

    class Rec:
        rgb = np.zeros((4, 6, 3), np.uint8)

    det, base = Counting(), DetectorConfig()
    driving.detect_cached(det, Rec(), base, tmp_path, "k")
    # instance, range, tracking and geometry settings read the same maps
    driving.detect_cached(det, Rec(), apply_overrides(base, {"score_threshold": 0.3, "track_confirm_hits": 1,
                                                             "max_obstacle_distance_m": 20.0,
                                                             "camera_height_m": 2.0}), tmp_path, "k")
    assert det.calls == 1
    # any other setting is a new key, including ones no hand-written list named (precision, scale_fusion)
    for change in ({"teacher_flip": True}, {"precision": "fp16"}, {"scale_fusion": "mean"}, {"road_roi": True},
                   {"student_path": "/elsewhere.safetensors"}):
        before = det.calls
        driving.detect_cached(det, Rec(), apply_overrides(base, change), tmp_path, "k")
        assert det.calls == before + 1, change
    assert len({p.parent for p in tmp_path.rglob("*.npz")}) == 6


def test_drive_interval_resamples_whole_drives():
    """Identical drives: no spread, the pooled value itself; two different drives: the interval spans
    from one drive's ratio to the other's (a resample of two drives can be either one twice)."""
    interval = _load().drive_interval
    same = [{"near_detected": 3, "near_gt": 4, "false_alarms": 2, "frames": 10}] * 5
    (r_lo, r_hi), (f_lo, f_hi) = interval(same)
    assert r_lo == r_hi == 0.75 and f_lo == f_hi == 0.2
    two = [{"near_detected": 0, "near_gt": 10, "false_alarms": 0, "frames": 10},
           {"near_detected": 10, "near_gt": 10, "false_alarms": 5, "frames": 10}]
    (r_lo, r_hi), (f_lo, f_hi) = interval(two)
    assert (r_lo, r_hi) == (0.0, 1.0) and (f_lo, f_hi) == (0.0, 0.5)
    assert interval(two, seed=3) == interval(two, seed=3)
    # a drive with no obstacle within 30 m adds frames and false alarms, never a recall of 0
    empty = [{"near_detected": 0, "near_gt": 0, "false_alarms": 1, "frames": 10}]
    (r_lo, r_hi), _ = interval(same[:1] + empty)
    assert r_lo == r_hi == 0.75


def test_driving_markdown_gives_the_bootstrap_interval_only_over_several_drives():
    import numpy as np

    from csl_ros.config import DetectorConfig
    from csl_ros.eval.driving import DrivingAccumulator, GroundTruth
    driving = _load()
    info = {"fx": 100.0, "fy": 100.0, "cx": 50.0, "cy": 0.0, "width": 100, "height": 80}
    truth = GroundTruth(camera_info=info, camera={"height_m": 1.0, "pitch_deg": 0.0})
    labels = np.zeros((80, 100), np.uint8)
    labels[10:20, 10:20] = 1                          # an obstacle at 100 / 20 = 5 m
    per_drive, acc = [], DrivingAccumulator(DetectorConfig(), instsize=4)
    for drive, found in enumerate((True, False)):     # found in the first drive, missed in the second
        inst = (labels * found).astype(np.uint16)
        alone = DrivingAccumulator(DetectorConfig(), instsize=4)
        acc.new_sequence()
        for k in range(2):
            for a in (acc, alone):
                a.add((drive * 10 + k) * 10**8, labels, inst, inst.astype(np.float32), truth)
        per_drive.append(driving.drive_counts(alone.result()))
    r = acc.result()
    r["per_drive"] = per_drive
    data = {"command": "python bench/driving.py", "seeds": [1, 2],
            "test": driving.summary("shipped default", DetectorConfig(), r)}
    text = driving.driving_markdown(data)
    assert "bootstrap interval over the 2 drives" in text and "recall within 30 m 0.0-100.0 %" in text
    r["per_drive"] = per_drive[:1]
    assert "bootstrap" not in driving.driving_markdown(data)
    assert "faint areas" not in text
    r["tracking"]["continue_ratio"] = 0.7             # the run's track_continue_ratio is said
    assert "confirmed tracks continued on faint areas down to 0.7 x the threshold" in driving.driving_markdown(data)
    assert "mirrored" not in text                     # the run's teacher_flip is said
    data["test"] = driving.summary("shipped default", DetectorConfig(teacher_flip=True), r)
    assert "averaged with its pass on the mirrored image (teacher_flip)" in driving.driving_markdown(data)


def test_tune_measures_its_floor_with_the_same_configuration(monkeypatch, capsys):
    """--tune --set teacher=msp: the recall floor is MSP's current default (its threshold from the
    student's metadata), not the default teacher's, whose fused scores sit on another scale."""
    driving = _load()
    calls = []

    def fake_run(seeds, frames, base, tune, with_default=False, **kw):
        calls.append((base.teacher, tune, with_default))
        tracked = {"near": {"recall": 0.5}, "false_alarms_per_frame": 0.1}
        per_frame = {"near": {"recall": 0.5}, "false_alarms_per_frame": 0.1, "fragmentation": 1.0}
        return {name: (base, {"tracked": tracked, "per_frame": per_frame})
                for name in ("grid setting", "shipped default")}

    monkeypatch.setattr(driving, "run", fake_run)
    assert driving.main(["--tune", "--tune-drives", "1", "--frames", "1", "--set", "teacher=msp"]) == 0
    assert calls == [("msp", True, True)]     # the floor's setting is scored in the grid's own pass
    out = capsys.readouterr().out
    assert "current default: tracked recall within 30 m 0.500" in out
    assert "chosen: grid setting" in out          # the current default is the floor, not a candidate
