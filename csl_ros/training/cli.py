"""``csl-ros train``: train the CSL student or the closed-set segmenter (teacher base).

``student`` and ``segmenter`` each have their own ``--help``. A run resumes from ``<out>/last.pt`` when
it exists (``--no-resume`` starts afresh, ``--resume PATH`` picks a checkpoint); ``--print-config``
shows every setting ``--set`` can change.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import yaml

from csl_ros.cli import add_command
from csl_ros.settings import load_yaml_config, parse_set_args
from csl_ros.training.config import DATASETS as TRAIN_DATASETS, STUDENT_SCHEMES, load_train_config

STUDENT_DOC = """csl-ros train student: train the class-agnostic (ca) or scheme-1 (distilled) CSL student.

Settings come in sections (data, optim, student, run; defaults = the Mask2Former recipe of the paper);
--set section.key=value (or key=value when the key is unique) overrides a YAML --config;
--print-config lists them all. A run resumes from <out>/last.pt when it exists.

  csl-ros train student --scheme ca --config my.yaml --set optim.max_steps=20000 --out runs/ca
  csl-ros train student --scheme 1 --set student.teacher=sml --set student.teacher_path=seg.safetensors
  torchrun --nproc_per_node 8 -m csl_ros train student --scheme ca --set data.dataset=cityscapes \\
      --set data.root=/data/cityscapes            # multi-GPU (nccl) or multi-process CPU (gloo)
"""
SEGMENTER_DOC = """csl-ros train segmenter: train the closed-set segmenter the logit teachers score with.

The teachers MSP, max-logit, SML and energy score its logits. One flat config (--set key=value, --print-config lists the keys), on the same synthroad frame cache as
the student, or on Cityscapes (gtFine trainIds). A run resumes from <out>/last.pt when it exists.

  csl-ros train segmenter --set steps=2000 --out runs/segmenter --export models/seg.safetensors
  csl-ros train segmenter --data cityscapes --root /data/cityscapes --set preset=deeplabv3_resnet50 \
      --set crop_size=512x1024 --set val_split=val --out runs/seg_cityscapes
"""


def register(subparsers) -> None:
    p = add_command(subparsers, "train", "train the CSL student or the closed-set segmenter", __doc__)
    sub = p.add_subparsers(dest="train_command", metavar="WHAT")
    sub.required = True

    s = add_command(sub, "student", "class-agnostic (ca) or scheme-1 (distilled) CSL student", STUDENT_DOC)
    s.add_argument("--scheme", choices=STUDENT_SCHEMES, help="ca: regions only; 1: + distillation head and "
                   "Huber loss against a frozen teacher (overrides student.scheme)")
    _common(s)
    s.add_argument("--export", type=Path, default=None, metavar="PATH",
                   help="also write a compact copy of the final student here (for shipping)")
    s.add_argument("--export-dtype", choices=("float16", "int8", "float32"), default="float16",
                   help="weight storage of --export: float16, or int8 conv/linear weights with per-channel "
                        "scales (half the size again); loading always gives float32")
    s.add_argument("--prepare-only", action="store_true",
                   help="only render / check the training data (fills the synthroad cache), then exit")
    s.set_defaults(func=run_student)

    g = add_command(sub, "segmenter", "closed-set segmenter for the logit teachers", SEGMENTER_DOC)
    _common(g)
    g.add_argument("--data", default=None, choices=TRAIN_DATASETS,
                   help="training data (overrides dataset of the config; default synthroad)")
    g.add_argument("--root", default=None, help="dataset folder for --data cityscapes (overrides root)")
    g.add_argument("--cache-dir", default="", help="synthroad frame cache (default ~/.cache/csl_ros/synthroad)")
    g.add_argument("--export", type=Path, default=None, metavar="PATH",
                   help="copy the final segmenter checkpoint here")
    g.set_defaults(func=run_segmenter)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML training config file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (repeatable; --print-config lists the keys)")
    p.add_argument("--out", default=None, help="output folder (overrides the config's)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="resume from this checkpoint")
    p.add_argument("--no-resume", action="store_true", help="ignore <out>/last.pt and start afresh")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def student_config_from_args(args):
    overrides = parse_set_args(args.set)
    if getattr(args, "scheme", None):
        overrides["student.scheme"] = args.scheme
    if args.out:
        overrides["run.out_dir"] = args.out
    overrides.setdefault("task", "student")
    return load_train_config(args.config, overrides)


def run_student(args) -> int:
    cfg = student_config_from_args(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    # deferred: torch; csl-ros imports every command module to build its parser
    from csl_ros.training.datasets import build_dataset
    from csl_ros.training.distributed import barrier, cleanup_distributed, init_distributed
    from csl_ros.training.student import export_student, train_student

    Path(cfg.run.out_dir).mkdir(parents=True, exist_ok=True)  # an unusable --out fails now, not after the data

    env = init_distributed(cfg.run.device)
    try:
        dataset = build_dataset(cfg.data)
        if env.is_main:
            rendered = dataset.prepare(progress=cfg.run.progress)
            if rendered:
                print(f"rendered {rendered} frames into the cache")
        barrier(env)
        if args.prepare_only:
            return 0
        resume = False if args.no_resume else (args.resume or True)
        summary, trainer = train_student(cfg, env, dataset=dataset, resume=resume)
        if env.is_main:
            out = Path(cfg.run.out_dir)
            final = out / "student.safetensors"
            result = {"steps_run": summary.steps_run, "final_step": summary.final_step,
                      "wall_s": round(summary.wall_s, 1), "last_loss": summary.last_loss,
                      "world_size": env.world_size, "student": str(final) if final.is_file() else None}
            if args.export is not None and final.is_file():
                result["export_sha256"] = export_student(final, args.export, args.export_dtype,
                                                         {"train_steps": summary.final_step})
                result["export"] = str(args.export)
            (out / "summary.json").write_text(json.dumps(result, indent=1) + "\n")
            print(json.dumps(result))
    finally:
        cleanup_distributed()
    return 0


# --- segmenter: a task of the same trainer (csl_ros.training.segmenter) ----------------------------

def segmenter_config_from_args(args):
    # deferred: torch; csl-ros imports every command module to build its parser
    from csl_ros.training.segmenter import SegmenterTrainConfig

    cfg = load_yaml_config(SegmenterTrainConfig(), args.config, parse_set_args(args.set), "training config")
    if args.out:
        cfg = dataclasses.replace(cfg, out_dir=args.out)
    if args.no_resume:
        cfg = dataclasses.replace(cfg, resume=False)
    if getattr(args, "data", None):
        cfg = dataclasses.replace(cfg, dataset=args.data)
    if getattr(args, "root", None):
        cfg = dataclasses.replace(cfg, root=args.root)
    cfg.validate()
    return cfg


def run_segmenter(args) -> int:
    cfg = segmenter_config_from_args(args)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if args.resume:
        raise ValueError("train segmenter resumes from <out>/last.pt automatically; --resume PATH is "
                         "only supported for the student")

    # deferred: torch; csl-ros imports every command module to build its parser
    from csl_ros.training.segmenter import segmenter_frames, train_segmenter

    # synthroad with cache_frames: the on-disk frame cache the student trainer and fit-stats share
    dataset, val = (segmenter_frames(cfg, args.cache_dir or None, in_memory=not cfg.cache_frames, validation=v)
                    for v in (False, True))
    if cfg.cache_frames:
        dataset.prepare(progress=cfg.progress)
    result = train_segmenter(cfg, dataset=dataset, val_dataset=val)
    summary = {"segmenter": str(result.segmenter_path), "steps": cfg.steps,
               "last_loss": result.losses[-1][1] if result.losses else None, "miou": result.miou}
    if args.export is not None and result.segmenter_path is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result.segmenter_path, args.export)
        summary["export"] = str(args.export)
    (Path(cfg.out_dir) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return 0
