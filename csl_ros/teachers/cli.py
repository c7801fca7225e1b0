"""``csl-ros teacher fit-stats``: SML statistics and score calibration of a teacher model.

Runs the closed-set segmenter (``.safetensors``/``.pt``/``.pth``, a Hugging Face SegFormer /
Mask2Former folder or ``hf:<repo>``; Mask2Former: its per-pixel class scores l_c) or an ONNX teacher
(``.onnx``) over
in-distribution frames, once, and writes ``TeacherStats`` JSON: class-wise max-logit mean/variance
(SML), quantiles of every score function and the fitted global calibrations. The file records the
SHA-256 of the model, so it is refused with another model.

Data sources:
  synthroad   frames rendered on the fly without obstacles (seeds --first-seed .. +--frames)
  cityscapes  leftImg8bit/<split>/*/*_leftImg8bit.png under --root (gtFine must be present); any
              other registered dataset with semantic labels likewise
  images      every .png/.jpg/.jpeg/.webp under --root, sorted (e.g. any in-distribution folder)

    csl-ros teacher fit-stats --segmenter seg.safetensors --data cityscapes --root /data/cityscapes
"""
from __future__ import annotations

from pathlib import Path

from csl_ros.cli import add_command, image_size_arg
from csl_ros.config import DetectorConfig
from csl_ros.data.loaders import open_dataset, read_rgb
from csl_ros.data.registry import DATASETS
from csl_ros.data.synthroad import render_frame
from csl_ros.teachers.registry import unbounded_scores

TEACHER_DOC = """csl-ros teacher: utilities for the teacher models whose per-pixel scores CSL fuses.

fit-stats fits the SML statistics and the [0, 1] score calibration of a closed-set segmenter or an
ONNX teacher on in-distribution frames (csl-ros teacher fit-stats --help).
"""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def register(subparsers) -> None:
    default = DetectorConfig()
    p = add_command(subparsers, "teacher", "teacher utilities (fit-stats)", TEACHER_DOC)
    sub = p.add_subparsers(dest="teacher_command", metavar="SUBCOMMAND")
    sub.required = True
    f = add_command(sub, "fit-stats", "fit SML statistics and score calibration on ID frames", __doc__)
    f.add_argument("--segmenter", required=True,
                   help="closed-set segmenter checkpoint (.safetensors/.pt/.pth), Hugging Face model folder "
                        "or hf:<repo>[@revision], or ONNX teacher (.onnx)")
    f.add_argument("--data", required=True, choices=DATASETS.choices(where={"semantic": True},
                                                                      after=("images",)),
                   help="in-distribution frames to fit on")
    f.add_argument("--root", type=Path, help="dataset folder (cityscapes, images)")
    f.add_argument("--split", default="train", help="Cityscapes split (default train)")
    f.add_argument("--frames", type=int, default=None,
                   help="number of frames to fit on (default: 200 for synthroad, every frame for cityscapes "
                        "and images)")
    f.add_argument("--first-seed", type=int, default=0, help="first synthroad seed (default 0)")
    f.add_argument("--size", type=image_size_arg, default=(default.input_height, default.input_width),
                   help="fitting resolution HxW in pixels, the teacher's test-time input size "
                        f"(default {default.input_height}x{default.input_width})")
    f.add_argument("--batch-size", type=int, default=2, help="number of frames per forward pass (default 2)")
    f.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N (default auto)")
    f.add_argument("--preset", default=None, help="segmenter architecture for plain state dicts "
                   "whose keys are not recognised")
    f.add_argument("--onnx-normalization", default=None, choices=("imagenet", "unit", "raw"),
                   help="input normalisation of a float-input ONNX model (default: its metadata, "
                        "else imagenet)")
    f.add_argument("--onnx-output", default=None, metavar="NAME",
                   help="output of the ONNX model to use, by name (default: its first)")
    f.add_argument("--calibration", default="logistic", choices=("logistic", "quantile_linear"),
                   help="calibration of the unbounded scores " + ", ".join(unbounded_scores()))
    f.add_argument("--map-calibration", default="identity",
                   choices=("identity", "affine", "logistic", "quantile_linear"),
                   help="calibration of a one-channel ONNX anomaly map (identity: already in [0,1]; "
                        "affine: q01 -> 0, q99 -> 1 of the in-distribution map, for another range)")
    f.add_argument("--reservoir", type=int, default=200_000,
                   help="number of pixels sampled for the calibration quantiles (default 200000)")
    f.add_argument("--seed", type=int, default=0, help="seed of the pixel sampling (default 0)")
    f.add_argument("--out", type=Path, default=None,
                   help="output JSON (default: <segmenter>.stats.json beside the model)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.set_defaults(func=run_fit_stats)


def _frames(args):
    """(iterator of H×W×3 uint8 RGB frames, count, description)."""
    if args.frames is not None and args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if args.data == "synthroad":
        n = args.frames or 200
        h, w = args.size
        seeds = range(args.first_seed, args.first_seed + n)
        return ((render_frame(s, size=(h, w), obstacles="none").image for s in seeds), n,
                {"data": "synthroad", "seeds": [args.first_seed, args.first_seed + n - 1],
                 "obstacles": "none"})
    if args.root is None:
        raise ValueError(f"--data {args.data} needs --root")
    if args.data in DATASETS:
        split = {"split": args.split} if "split" in DATASETS.entry(args.data).options else {}
        ds = open_dataset(args.data, args.root, **split)
        n = min(len(ds), args.frames or len(ds))
        return ((ds[i].rgb for i in range(n)), n, {"data": args.data, **split, "root": str(args.root)})

    if not args.root.is_dir():
        raise FileNotFoundError(f"image folder not found: {args.root}")
    files = sorted(p for p in args.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images under {args.root}")
    files = files[:args.frames] if args.frames else files
    return ((read_rgb(p) for p in files), len(files), {"data": "images", "root": str(args.root)})


def run_fit_stats(args) -> int:
    # deferred: torch; csl-ros imports every command module to build its parser
    from csl_ros.teachers.fit import fit_teacher_stats
    from csl_ros.teachers.hf import is_hf_source, load_hf_segmenter
    from csl_ros.teachers.stats import default_stats_path
    from csl_ros.teachers.teacher import HF_STATS_FILE, resolve_device

    device = resolve_device(args.device)
    model_path, digest, out = Path(args.segmenter), None, args.out
    if is_hf_source(args.segmenter):
        model = load_hf_segmenter(args.segmenter, device)
        kind, model_path, digest = f"{model.kind} ({model.path})", None, model.digest
        out = out or model.path / HF_STATS_FILE
    elif not model_path.is_file():
        raise FileNotFoundError(f"teacher model not found: {args.segmenter}")
    elif model_path.suffix == ".onnx":
        # deferred: torch; csl-ros imports every command module to build its parser
        from csl_ros.teachers.onnx_runner import OnnxModel

        model = OnnxModel(model_path, device, input_normalization=args.onnx_normalization,
                          output_name=args.onnx_output)
        kind = f"onnx ({model.output_kind})"
    else:
        # deferred: torch; csl-ros imports every command module to build its parser
        from csl_ros.teachers.segmenter import load_segmenter

        model = load_segmenter(model_path, args.preset, device=device)
        kind = model.config.arch
    frames, n, info = _frames(args)
    stats = fit_teacher_stats(model, frames, size=args.size, batch_size=args.batch_size, device=device,
                              reservoir_size=args.reservoir, seed=args.seed,
                              calibration=args.calibration, map_calibration=args.map_calibration,
                              model_path=model_path, model_sha256=digest, total=n, progress=not args.quiet,
                              frames=n, model_kind=kind, **info)
    out = out or default_stats_path(model_path)
    digest = stats.save(out)
    print(f"teacher statistics of {args.segmenter} ({kind}) on {n} {info['data']} frames at "
          f"{args.size[0]}x{args.size[1]}: {stats.fit_info['pixels']} pixels, "
          f"{stats.fit_info['sampled_pixels']} sampled for calibration")
    if stats.has_class_stats:
        print(" class   pixels        mean     std")
        for c, (cnt, m, v) in enumerate(zip(stats.class_count, stats.class_mean, stats.class_var)):
            note = "  (pooled: too few pixels)" if c in stats.fallback_classes else ""
            print(f" {c:5d} {cnt:9d} {m:10.4f} {v ** 0.5:8.4f}{note}")
    for name, qs in stats.quantiles.items():
        cal = stats.calibration[name].to_dict()
        params = ", ".join(f"{k}={v:.4g}" for k, v in cal.items() if k != "method")
        print(f" {name:9s} q01={qs[0.01]:9.4f} q50={qs[0.5]:9.4f} q99={qs[0.99]:9.4f}  "
              f"-> {cal['method']}{' (' + params + ')' if params else ''}")
    print(f"wrote {out} (sha256 {digest})")
    return 0
