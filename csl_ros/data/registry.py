"""The dataset registry: name -> loader class of :mod:`csl_ros.data.loaders` (or any class built alike).

A loader is a sequence of :class:`~csl_ros.data.loaders.Record` (``len``, ``ds[i]``, iteration) built
as ``cls(root, **options)`` (``cls(**options)`` when ``root`` is False). Metadata:

* ``root``: the loader reads a folder (False for a generated dataset such as synthroad);
* ``fixed``: keyword arguments that make this name (e.g. the SMIYC track);
* ``options``: further keyword arguments it accepts from a command line (``split``, ``laf_root``...);
* ``anomaly_labels``: its records carry 0/1/255 obstacle labels (benchmarks; ``csl-ros bag convert``);
* ``semantic``: its records carry Cityscapes trainIds of in-distribution scenes (training the
  segmenter and the student, fitting teacher statistics);
* ``help``: one line for the CLI.

``open_dataset`` (loaders), ``csl-ros bag convert --dataset``, the training config's
``data.dataset`` and ``csl-ros teacher fit-stats --data`` all read :data:`DATASETS`. Pure Python: the
loader classes are imported on first use.
"""
from __future__ import annotations

from csl_ros.registry import Registry

DATASETS = Registry("dataset", root=True, fixed={}, options=(), anomaly_labels=True, semantic=False,
                    help="")

_LOADERS = "csl_ros.data.loaders"
DATASETS.register("smiyc-anomaly", f"{_LOADERS}:SmiycTrack", fixed={"track": "anomaly"},
                  options=("require_labels",), help="SMIYC RoadAnomaly21")
DATASETS.register("smiyc-obstacle", f"{_LOADERS}:SmiycTrack", fixed={"track": "obstacle"},
                  options=("require_labels",), help="SMIYC RoadObstacle21")
DATASETS.register("laf", f"{_LOADERS}:LostAndFound", fixed={"subset": "all"}, options=("split",),
                  help="LostAndFound (test or train split)")
DATASETS.register("laf-noknown", f"{_LOADERS}:LostAndFound", fixed={"split": "test", "subset": "noknown"},
                  help="LostAndFound-test without known classes (SMIYC's LostAndFound NoKnown)")
DATASETS.register("fishyscapes-laf", f"{_LOADERS}:FishyscapesLAF", options=("laf_root",),
                  help="Fishyscapes LostAndFound validation")
DATASETS.register("cityscapes", f"{_LOADERS}:Cityscapes", options=("split",), anomaly_labels=False,
                  semantic=True, help="Cityscapes leftImg8bit + gtFine")
DATASETS.register("synthroad", f"{_LOADERS}:Synthroad", root=False, semantic=True,
                  options=("seed", "n_frames", "size", "obstacles", "speed_mps", "fps"),
                  help="synthroad drive rendered on the fly")
