"""Training of the CSL student and of the closed-set segmenter with one trainer (``csl-ros train``).

* :mod:`~csl_ros.training.config`: ``TrainConfig`` (YAML <-> dataclass, ``--set section.key=value``);
* :mod:`~csl_ros.training.distributed`: torchrun / DDP setup, deterministic index stream sharding;
* :mod:`~csl_ros.training.augment`: resize, crop, flip, colour jitter, then the mask split;
* :mod:`~csl_ros.training.datasets`: synthroad (cached, in-distribution only) and Cityscapes frames;
* :mod:`~csl_ros.training.loop`: ``Trainer`` (AdamW, poly, clipping, AMP, resumable checkpoints, logs);
* :mod:`~csl_ros.training.student`: ``train_student`` for scheme "ca" and scheme 1;
* :mod:`~csl_ros.training.segmenter`: ``train_segmenter``, the closed-set segmenter as a task of the
  same ``Trainer``.

Submodules import torch; ``import csl_ros.training`` itself stays cheap.
"""
