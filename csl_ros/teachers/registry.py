"""The teacher registry: score-function name -> per-pixel OOD score over closed-set logits.

An entry's object is ``score(logits B×K×H×W) -> B×1×H×W`` (higher = more anomalous), or
``score(logits, stats)`` when ``needs_stats`` (the score needs class-wise statistics of a
``TeacherStats``, as SML does). Metadata:

* ``bounded``: the raw score already lies in [0, 1] (it may be used without a fitted calibration);
* ``calibration``: the calibration ``csl-ros teacher fit-stats`` stores for it by default
  (``identity`` for probabilities, ``logistic`` for unbounded scores);
* ``needs_stats``: called as ``score(logits, stats)``;
* ``help``: one line for the configuration's documentation.

The teacher names of the configuration (``DetectorConfig.teacher``), the training config, the
statistics fit and the benchmark tables are all views of :data:`TEACHERS`. Pure Python: the score
functions are imported (with torch) on first use.
"""
from __future__ import annotations

from csl_ros.registry import Registry

TEACHERS = Registry("teacher", bounded=False, calibration="logistic", needs_stats=False, help="")

# Built-ins, in the order of the paper's tables (spec section 7).
TEACHERS.register("msp", "csl_ros.teachers.scores:msp_score", bounded=True, calibration="identity",
                  help="1 - max softmax")
TEACHERS.register("maxlogit", "csl_ros.teachers.scores:maxlogit_score", help="negative max logit")
TEACHERS.register("sml", "csl_ros.teachers.scores:sml_score_from_stats", needs_stats=True,
                  help="standardized max logit")
TEACHERS.register("entropy", "csl_ros.teachers.scores:entropy_score", bounded=True, calibration="identity",
                  help="normalised softmax entropy")
TEACHERS.register("energy", "csl_ros.teachers.scores:energy_score", help="free energy")

# Names of the configuration that are not score functions: no teacher (scheme 1), and an external
# method exported to ONNX (its score function, if it outputs logits, is a TEACHERS name).
NO_TEACHER = "none"
ONNX_TEACHER = "onnx"


def unbounded_scores() -> tuple[str, ...]:
    """Scores that need a fitted calibration to reach [0, 1]."""
    return TEACHERS.names(bounded=False)


def default_calibrations() -> dict[str, str]:
    """Score name -> the calibration stored by default; ``map`` is a one-channel ONNX teacher's raw
    output (usually already a probability)."""
    return {**{name: TEACHERS.entry(name).calibration for name in TEACHERS}, "map": "identity"}
