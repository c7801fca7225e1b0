"""bench/driving_candidates.py: the threshold rule and the instance classifier on candidate instances."""
import numpy as np
import pytest

from bench_modules import load_bench


def _load():
    return load_bench("driving_candidates")


def _candidates():
    # 4 candidates on 10 frames with 4 near obstacle-frames: two true ones detect "a" and "b" (the second also
    # "c"), one true one detects only a far obstacle (no near hit), one is false
    feats = np.zeros((4, len(_load().FEATURES)))
    feats[:, 0] = [0.3, 0.08, 0.2, 0.15]
    return {"features": feats, "true": np.array([True, True, True, False]), "drive": np.array([1, 1, 2, 2]),
            "hits": [["a"], ["b", "c"], [], []], "near": 4, "frames": 10, "threshold": 0.05}


def test_rule_point_counts_near_obstacles_once_and_false_candidates_per_frame():
    dc = _load()
    c = _candidates()
    assert dc.rule_point(c, np.ones(4, bool)) == (0.75, 0.1)            # a, b, c of 4; 1 false on 10 frames
    assert dc.rule_point(c, np.array([True, False, True, False])) == (0.25, 0.0)
    c["hits"][2] = ["a"]                                                  # a seen twice still counts once
    assert dc.rule_point(c, np.ones(4, bool)) == (0.75, 0.1)


def test_compare_sweeps_the_score_from_the_candidate_threshold_and_picks_the_best_within_budget():
    dc = _load()
    r = dc.compare(_candidates(), max_fa=0.05)
    cut = {q["cutoff"]: (q["recall_near"], q["false_alarms_per_frame"]) for q in r["threshold_rule"]}
    assert min(cut) == 0.05 and cut[0.05] == (0.75, 0.1) and cut[0.1] == (0.25, 0.1) and cut[0.2] == (0.25, 0.0)
    assert r["best_threshold_rule"]["cutoff"] == 0.2      # 0.25 recall at 0 false alarms; 0.05 breaks the budget
    assert len(r["classifier"]) == len(dc.PROBABILITY_CUTOFFS)


def test_cross_validated_probability_never_scores_a_drive_with_a_model_that_saw_it():
    dc = _load()
    rng = np.random.default_rng(0)
    n = 200
    drive = np.repeat(np.arange(4), n // 4)
    feats = rng.normal(size=(n, len(dc.FEATURES)))
    true = feats[:, 0] > 0
    # drive 3 has the opposite relation: a model that saw it would get it partly right, the others get it wrong
    true[drive == 3] = ~true[drive == 3]
    c = {"features": feats, "true": true, "drive": drive, "hits": [[]] * n, "near": 1, "frames": 1, "threshold": 0}
    p = dc.cross_validated_probability(c)
    assert ((p[drive == 3] >= 0.5) == true[drive == 3]).mean() < 0.2
    assert ((p[drive < 3] >= 0.5) == true[drive < 3]).mean() > 0.7


def test_candidate_threshold_above_the_shipped_one_is_refused(capsys):
    assert _load().main(["--drives", "1", "--frames", "1", "--threshold", "0.9", "--threads", "1"]) == 2
    assert "above the shipped score_threshold" in capsys.readouterr().err


@pytest.mark.slow
def test_small_run_reports_both_curves(capsys, tmp_path):
    dc = _load()
    assert dc.main(["--drives", "2", "--frames", "3", "--threads", "1", "--json", str(tmp_path / "c.json")]) == 0
    out = capsys.readouterr().out
    assert "candidates" in out and "threshold rule: highest fused score >= 0.05" in out
    assert "logistic regression (4 folds of whole drives)" in out
