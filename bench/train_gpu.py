"""Train the shipped synthroad models on a lent GPU machine: one command, training under 9 minutes.

    PYTHONPATH=. python bench/train_gpu.py --out DIR            # on the GPU machine
    PYTHONPATH=. python bench/train_gpu.py --out DIR --dry-run  # same code, CPU, tiny (tests)

The recipe of bench/train_shipped.sh (which made models/ on a 2-core CPU) at the GPU's scale:
  1. render the in-distribution synthroad frames (seeds 0.., obstacles="none") at 512x1024 with every
     CPU core (one process per core; the PNG cache the trainers read);
  2. the closed-set segmenter (LR-ASPP MobileNetV3, from scratch), AMP, crops at the full frame size;
  3. its SML statistics and calibrations on validation seeds 1,000,000+;
  4. the class-agnostic student (r18_lite), AMP, int8 export;
  5. the scheme-1 student (from the class-agnostic one, distilled from the frozen SML teacher);
  6. the shipped teacher: the closed-set segmenter fine-tuned with synthetic negatives (outlier
     exposure, csl_ros.training.negatives), and its statistics;
then writes, in DIR, the shipped-format files (teacher_segmenter.safetensors + .stats.json,
teacher_segmenter_closed_set.safetensors + .stats.json,
student_ca.safetensors, student_scheme1.safetensors, manifest.json with SHA-256s), a model card per
model (the exact settings, steps and wall times of this run) and the results of these files on the
docs/results.md test set (bench/results.py: synthroad obstacle frames from seed 10,000,000, rendered at
the training size) as DIR/results.md and DIR/results.json; DIR/train_gpu.json has every stage's wall
time. Compare with docs/results.md before replacing the shipped models (same table, same seeds).
Every step runs the project's own commands (csl-ros train/teacher, bench/results.py) in a subprocess;
a failing step stops the run with its name and exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAL_SEED = 1_000_000


def _render_one(job):
    from csl_ros.training.datasets import SynthroadFrames

    first_seed, frames, size, cache, i = job
    SynthroadFrames(first_seed, frames, size, cache)[i]  # renders and writes the PNG pair
    return i


def render_frames(first_seed: int, frames: int, size, cache: Path, workers: int) -> int:
    """Render the missing frames of the cache with ``workers`` processes; returns how many."""
    from csl_ros.training.datasets import SynthroadFrames

    todo = SynthroadFrames(first_seed, frames, size, cache).missing()
    if todo:
        with get_context("spawn").Pool(workers) as pool:  # spawn: no forked torch/OpenMP state
            for _ in pool.imap_unordered(_render_one, [(first_seed, frames, size, cache, i) for i in todo],
                                         chunksize=4):
                pass
    return len(todo)


class Run:
    def __init__(self, out: Path):
        self.out, self.stages, self.t0 = out, {}, time.monotonic()

    def step(self, name: str, argv: list[str]) -> None:
        """Run one project command; stop the whole run if it fails."""
        print(f"== {name}: {' '.join(argv)}", flush=True)
        t = time.monotonic()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        rc = subprocess.call([sys.executable, *argv], cwd=ROOT, env=env)
        self.stages[name] = {"wall_s": round(time.monotonic() - t, 1), "command": argv}
        if rc != 0:
            raise SystemExit(f"train_gpu: step {name!r} failed with exit status {rc}")

    def timed(self, name: str, fn):
        t = time.monotonic()
        result = fn()
        self.stages[name] = {"wall_s": round(time.monotonic() - t, 1)}
        return result


def model_card(name: str, title: str, lines: list[str], stage: dict) -> str:
    return "\n".join([f"# {name} — {title} (GPU-trained by bench/train_gpu.py)", ""] + [f"* {line}" for line in lines]
                     + [f"* Trained in {stage['wall_s']:.0f} s with:", "",
                        "      " + " ".join(stage.get("command", [])), ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="folder for the models, cards, manifest, results and the frame cache")
    ap.add_argument("--dry-run", action="store_true", help="CPU, 64x128, a few frames and steps")
    ap.add_argument("--size", default="512x1024", help="render, crop and evaluation size HxW")
    ap.add_argument("--frames", type=int, default=1000, help="training frames (seeds 0..frames-1)")
    ap.add_argument("--segmenter-steps", type=int, default=1500, help="segmenter training steps")
    ap.add_argument("--oe-steps", type=int, default=600, help="outlier-exposure fine-tuning steps of the segmenter")
    ap.add_argument("--ca-steps", type=int, default=1500, help="class-agnostic student training steps")
    ap.add_argument("--scheme1-steps", type=int, default=600, help="scheme-1 student training steps")
    ap.add_argument("--batch", type=int, default=8, help="batch size (images per step) of every training")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="render processes")
    ap.add_argument("--test-frames", type=int, default=200, help="results: test frames (docs/results.md: 200)")
    ap.add_argument("--device", default="cuda", help="torch device of the trainings (default cuda)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.size, args.frames, args.segmenter_steps, args.ca_steps, args.scheme1_steps = "64x128", 4, 2, 2, 1
        args.oe_steps = 1
        args.batch, args.test_frames, args.device, args.workers = 2, 2, "cpu", 2
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("train_gpu: no CUDA device on this machine (use --dry-run to exercise the code on CPU)",
              file=sys.stderr)
        return 2
    h, w = (int(v) for v in args.size.split("x"))
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache, runs = out / "synthroad_cache", out / "runs"
    run = Run(out)
    val_frames = 4 if args.dry_run else 100
    run.timed("render", lambda: (render_frames(0, args.frames, (h, w), cache, args.workers),
                                 render_frames(VAL_SEED, val_frames, (h, w), cache, args.workers)))
    cli = ["-m", "csl_ros.cli"]
    seg, stats = out / "teacher_segmenter.safetensors", out / "teacher_segmenter.stats.json"
    closed, closed_stats = out / "teacher_segmenter_closed_set.safetensors", out / "teacher_segmenter_closed_set.stats.json"
    ca, s1 = out / "student_ca.safetensors", out / "student_scheme1.safetensors"
    run.step("segmenter", cli + [
        "train", "segmenter", "--out", str(runs / "segmenter"), "--cache-dir", str(cache), "--no-resume",
        "--set", f"frames={args.frames}", "--set", f"render_size={h}x{w}", "--set", f"crop_size={h}x{w}",
        "--set", "scale_range=0.5,1.5", "--set", f"steps={args.segmenter_steps}", "--set", f"batch_size={args.batch}",
        "--set", "lr=1e-3", "--set", "amp=true", "--set", f"device={args.device}", "--set", "progress=false",
        "--set", f"checkpoint_every={max(args.segmenter_steps, 1)}", "--set", f"val_frames={val_frames}",
        "--export", str(closed)])

    def statistics(name, model, out_path):
        run.step(name, cli + [
            "teacher", "fit-stats", "--segmenter", str(model), "--data", "synthroad", "--first-seed", str(VAL_SEED),
            "--frames", str(val_frames), "--size", f"{h}x{w}", "--batch-size", str(args.batch), "--device",
            args.device, "--quiet", "--out", str(out_path)])

    statistics("statistics", closed, closed_stats)
    common = ["--set", "student.preset=r18_lite", "--set", f"data.root={cache}", "--set", f"data.synth_frames={args.frames}",
              "--set", f"data.synth_height={h}", "--set", f"data.synth_width={w}", "--set", f"data.crop_height={h}",
              "--set", f"data.crop_width={w}", "--set", "data.min_scale=0.5", "--set", "data.max_scale=1.5",
              "--set", "data.min_component_area=100", "--set", f"data.workers={0 if args.dry_run else 8}",
              "--set", f"optim.batch_size={args.batch}", "--set", "optim.lr=5e-4",
              "--set", "optim.backbone_lr_multiplier=1.0", "--set", "optim.amp=true",
              "--set", f"run.device={args.device}", "--set", "run.progress=false", "--no-resume"]
    run.step("student_ca", cli + [
        "train", "student", "--scheme", "ca", "--out", str(runs / "student_ca"), *common,
        "--set", f"optim.max_steps={args.ca_steps}", "--set", f"run.checkpoint_every={max(args.ca_steps, 1)}",
        "--export", str(ca), "--export-dtype", "int8"])
    run.step("student_scheme1", cli + [
        "train", "student", "--scheme", "1", "--out", str(runs / "student_scheme1"), *common,
        "--set", f"optim.max_steps={args.scheme1_steps}", "--set", f"run.checkpoint_every={max(args.scheme1_steps, 1)}",
        "--set", "student.distill_weight=100", "--set", f"student.init_from={runs / 'student_ca' / 'student.safetensors'}",
        "--set", "student.teacher=sml", "--set", f"student.teacher_path={closed}",
        "--set", f"student.teacher_stats_path={closed_stats}", "--export", str(s1), "--export-dtype", "int8"])
    run.step("outlier_exposure", cli + [
        "train", "segmenter", "--out", str(runs / "segmenter_oe"), "--cache-dir", str(cache), "--no-resume",
        "--set", f"frames={args.frames}", "--set", f"render_size={h}x{w}", "--set", f"crop_size={h}x{w}",
        "--set", "scale_range=0.5,1.5", "--set", f"steps={args.oe_steps}", "--set", f"batch_size={args.batch}",
        "--set", "lr=3e-4", "--set", "warmup_steps=0", "--set", "negatives_max=3", "--set", "negative_weight=1.0",
        "--set", f"init_from={closed}", "--set", "amp=true", "--set", f"device={args.device}",
        "--set", "progress=false", "--set", f"checkpoint_every={max(args.oe_steps, 1)}",
        "--set", f"val_frames={val_frames}", "--export", str(seg)])
    statistics("statistics_oe", seg, stats)
    training_s = sum(s["wall_s"] for s in run.stages.values())

    from csl_ros.shipped import register_shipped

    cards = {
        "teacher_segmenter": ("segmenter under the logit teachers (closed-set stage + outlier exposure)", [
            f"Closed-set stage (teacher_segmenter_closed_set, the scheme-1 teacher): LR-ASPP MobileNetV3-Large, "
            f"from scratch, 19 Cityscapes trainIds; {args.segmenter_steps} steps, batch {args.batch}, AMP, crops "
            f"{h}x{w} of frames scaled 0.5-1.5.",
            f"Shipped stage (teacher_segmenter): {args.oe_steps} steps of outlier exposure from the closed-set "
            "weights, 0-3 synthetic negatives per crop (patches of other in-distribution frames pasted on the "
            "road, entropy maximisation on their pixels, weight 1.0), lr 3e-4.",
            f"SML statistics and calibrations of both: {val_frames} synthroad validation frames (seeds {VAL_SEED}+) "
            f"at {h}x{w}."]),
        "student_ca": ("class-agnostic CSL student (scheme 2 default)", [
            f"r18_lite, from scratch; {args.ca_steps} steps, batch {args.batch}, AMP, crops {h}x{w}, mask split "
            "minimum 100 px (the spec's value at 512x1024); int8 storage."]),
        "student_scheme1": ("scheme-1 CSL student (distilled)", [
            f"r18_lite from student_ca; {args.scheme1_steps} steps, distillation weight 100 against the frozen SML "
            f"teacher of the closed-set segmenter (teacher_segmenter_closed_set); int8 storage."]),
    }
    common_lines = [f"Data: synthroad in-distribution frames (obstacles=\"none\"), seeds 0..{args.frames - 1} at {h}x{w},"
                    f" rendered with {args.workers} processes. No OOD data (the negatives are in-distribution pixels).",
                    f"Machine: {torch.cuda.get_device_name(0) if args.device.startswith('cuda') else 'CPU (dry run)'}, "
                    f"torch {torch.__version__}."]
    stage_of = {"teacher_segmenter": "outlier_exposure", "student_ca": "student_ca", "student_scheme1": "student_scheme1"}
    for name, (title, lines) in cards.items():
        (out / f"{name}.md").write_text(model_card(name, title, lines + common_lines, run.stages[stage_of[name]]))
    for name, path, kind, card in [("teacher_segmenter_closed_set", closed, "segmenter", "teacher_segmenter.md"),
                                   ("teacher_segmenter_closed_set_stats", closed_stats, "teacher_stats",
                                    "teacher_segmenter.md"),
                                   ("teacher_segmenter", seg, "segmenter", "teacher_segmenter.md"),
                                   ("teacher_segmenter_stats", stats, "teacher_stats", "teacher_segmenter.md"),
                                   ("student_ca", ca, "student", "student_ca.md"),
                                   ("student_scheme1", s1, "student", "student_scheme1.md")]:
        register_shipped(name, path, kind, out, card=card)
    summary = {"size": [h, w], "frames": args.frames, "device": args.device, "training_wall_s": training_s,
               "stages": run.stages, "target_training_s": 540, "dry_run": args.dry_run}
    # written before the results step too, so that a run stopped there still reports its training times
    (out / "train_gpu.json").write_text(json.dumps(summary, indent=1) + "\n")
    frames_args = ["--frames", str(args.test_frames)] + (["--val-frames", "2", "--tune-frames", "2"] if args.dry_run else [])
    run.step("results", ["bench/results.py", "--out", str(out / "results.md"), "--json", str(out / "results.json"),
                         "--height", str(h), "--width", str(w), "--student-ca", str(ca), "--student-scheme1", str(s1),
                         "--segmenter", str(seg), "--stats", str(stats), "--distill-teacher", str(closed),
                         # the driving section measures the configured default (the repo's shipped models),
                         # not these files: left out rather than mislabelled
                         "--driving-drives", "0", "--notes", "", "--threads", str(args.workers), *frames_args])
    (out / "train_gpu.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"train_gpu: render + training {training_s:.0f} s (target < 540 s on the GPU machine); "
          f"files, cards, manifest and results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
