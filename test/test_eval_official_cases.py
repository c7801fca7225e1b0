"""``csl-ros metrics --protocol official`` against numbers computed by the official SMIYC benchmark code.

test/data/smiyc_official_cases/ (a copy of ../shared/reference/smiyc_official_cases, see its README)
holds five synthetic cases and ``expected_official.json``: what ``SegmentMeIfYouCan/road-anomaly-benchmark``
HEAD 1c7804e, run with its pinned numpy 1.23.5, printed for them. Every metric listed there must come
out to 1e-6 under the project's numpy; the slow test repeats that under numpy 1.23.5 itself.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from csl_ros.cli import main
from csl_ros.eval import metrics as M

CASES = Path(__file__).parent / "data" / "smiyc_official_cases"
EXPECTED = json.loads((CASES / "expected_official.json").read_text())
REPO = Path(__file__).resolve().parents[1]


def case_args(key: str, out: Path) -> list[str]:
    """``csl-ros metrics`` arguments for a key ``case/scores dir/labels dir/track``."""
    case, scores, labels, track = key.split("/")
    return ["metrics", "--scores", str(CASES / case / scores), "--labels", str(CASES / case / labels),
            "--track", track, "--protocol", "official", "--out", str(out), "--quiet"]


def as_official_names(result: dict) -> dict:
    """metrics.json -> the names of expected_official.json."""
    px, comp = result["pixel"], result["components"]
    return {"AUPR": px["ap"], "AUROC": px["auroc"], "FPR95": px["fpr95"],
            "tpr95_threshold": px["tpr95_threshold"], "pixel_best_F1": px["best_f1"],
            "pixel_best_F1_threshold": px["best_f1_threshold"],
            "component_threshold": comp["score_threshold"], "sIoU_gt": comp["siou_gt"],
            "PPV": comp["ppv"], "mean_F1": comp["f1_mean"], "F1_25": comp["f1_25"],
            "F1_50": comp["f1_50"], "F1_75": comp["f1_75"],
            "n_gt_components": comp["n_gt_components"],
            "n_pred_components": comp["n_pred_components"]}


def assert_matches_official(got: dict, expected: dict, key: str) -> None:
    assert set(expected) <= set(got), f"{key}: metrics not reported: {set(expected) - set(got)}"
    wrong = {name: (got[name], want) for name, want in expected.items()
             if got[name] is None or abs(got[name] - want) > 1e-6}
    assert not wrong, f"{key}: (ours, official) {wrong}"


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_metrics_cli_gives_the_official_numbers(key, tmp_path):
    out = tmp_path / "metrics.json"
    assert main(case_args(key, out)) == 0
    assert_matches_official(as_official_names(json.loads(out.read_text())), EXPECTED[key], key)


@pytest.mark.skipif(not M.LONG_DOUBLE_TIE_ORDER, reason="long double is double on this platform")
def test_tie_order_is_numpy_1_23_5s():
    """official_argsort reproduces a permutation recorded under numpy 1.23.5 on heavily tied keys."""
    rec = json.loads((Path(__file__).parent / "data" / "numpy1235_argsort_ties.json").read_text())
    values = ((np.arange(300) * 37) % 11 // 2).astype(np.float64) * 0.125
    assert rec["values"] == "((np.arange(300) * 37) % 11 // 2).astype(np.float64) * 0.125"
    assert M.official_argsort(values).tolist() == rec["argsort"]


def test_thresholds_are_read_at_the_collapsed_curve_index():
    """HEAD 1c7804e: thresholds collapse with the counts; end points get max + 1 / max - 1."""
    # Descending thresholds with a repeated top one and a repeated middle one.
    thr = np.array([0.9, 0.9, 0.5, 0.5, 0.2])
    tp = np.array([1.0, 2.0, 3.0, 4.0, 4.0])
    fp = np.array([0.0, 1.0, 1.0, 2.0, 5.0])
    c = M.official_curve(thr, tp, fp, n_pos=4.0, n_neg=6.0)
    # kept indices [0, 1, 3, 4]; (0, 0) prepended with 0.9 + 1; (4, 6) appended with max - 1
    np.testing.assert_allclose(c["thresholds"], [1.9, 0.9, 0.9, 0.5, 0.2, 0.9])
    np.testing.assert_allclose(c["tp"], [0, 1, 2, 4, 4, 4])
    np.testing.assert_allclose(c["fp"], [0, 0, 1, 2, 5, 6])


@pytest.mark.slow
def test_official_numbers_under_numpy_1_23_5(tmp_path):
    """The same assertions with the leaderboard's numpy 1.23.5 installed (a throw-away virtualenv)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "numpy==1.23.5",
                          "opencv-python-headless==4.8.1.78", "tqdm"], capture_output=True, text=True,
                         timeout=600)
    if pip.returncode:
        pytest.skip(f"numpy 1.23.5 does not install here: {pip.stderr.strip()[-300:]}")
    script = textwrap.dedent(f"""
        import argparse, json, sys
        import numpy as np
        assert np.__version__ == "1.23.5", np.__version__
        from csl_ros.eval import metrics as M, metrics_cli
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        metrics_cli.register(sub)
        for args in json.loads(sys.argv[1]):
            a = parser.parse_args(args)
            assert a.func(a) == 0
        # The tie-order helper gives numpy 1.23.5's own default argsort on heavily tied keys.
        x = np.round(np.random.default_rng(0).random(200000) * 50) / 50
        assert (M.official_argsort(x) == np.argsort(x)).all()
    """)
    runs = {key: case_args(key, tmp_path / f"{i}.json") for i, key in enumerate(sorted(EXPECTED))}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([str(py), "-c", script, json.dumps(list(runs.values()))], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for i, key in enumerate(sorted(EXPECTED)):
        got = as_official_names(json.loads((tmp_path / f"{i}.json").read_text()))
        assert_matches_official(got, EXPECTED[key], key)
