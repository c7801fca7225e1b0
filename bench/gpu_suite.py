"""The GPU speed suite: one command for a lent GPU machine, finishing in under 8 minutes.

    PYTHONPATH=. python bench/gpu_suite.py --out DIR          # on the GPU machine
    PYTHONPATH=. python bench/gpu_suite.py --out DIR --dry-run  # same code, CPU, tiny size (tests)

Runs with the machine's own torch: no install step, no ROS import, no internet. Optional packages
that are missing (onnxruntime with its CUDA provider, torch-tensorrt, transformers) make their rows
say "not available" instead of failing the suite.

Rows, at 512x1024 and 1024x2048 (network size = image size):
  * the detector end to end (letterbox, student, teacher, post-processing, results on the host) for
    the shipped default (scheme 2: shipped student_ca + shipped SML teacher) and r50_paper (random
    weights; speed does not depend on them), in eager fp32, eager fp16 (autocast), compile
    (torch.compile with CUDA graphs), onnxruntime (CUDA execution provider) and tensorrt;
  * HF transformers Mask2Former R-50 (100 queries, random init, from a config), forward pass, fp32
    eager, on the same GPU: the reference.
Per row: frames/s, p50/p99 latency (ms), peak GPU memory (MiB), build time (s); for the shipped default
in eager fp32 and fp16 at the largest size also the memory still allocated after --soak-frames (2,000)
frames (a leak shows as growth). Rows run until --budget-s is spent; later rows say "skipped".
Writes DIR/gpu_suite.json and DIR/gpu_suite.md. Targets (issue 15), checked at the largest size: the
shipped default >= 60 frames/s end to end, >= 5x HF Mask2Former R-50 on the same GPU, p99 < 40 ms.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

VARIANTS = {  # name: (backend, precision)
    "eager fp32": ("eager", "fp32"),
    "eager fp16": ("eager", "fp16"),
    "compile": ("compile", "fp32"),
    "onnxruntime": ("onnxruntime", "fp32"),
    "tensorrt": ("tensorrt", "fp16"),
}
PRESETS = ("shipped", "r50_paper")
TARGET_FPS, TARGET_VS_HF, TARGET_P99_MS = 60.0, 5.0, 40.0


def environment() -> dict:
    """Versions of what this machine has (None = missing)."""
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
           "torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for name in ("numpy", "cv2", "scipy", "safetensors", "onnxruntime", "transformers", "triton", "torch_tensorrt"):
        try:
            env[name] = getattr(importlib.import_module(name), "__version__", "present")
        except Exception:
            env[name] = None
    if env["onnxruntime"]:
        import onnxruntime

        env["onnxruntime_providers"] = onnxruntime.get_available_providers()
    return env


def unavailable_reason(variant: str, device: torch.device) -> str | None:
    """Why a variant cannot run here (None: it can)."""
    from csl_ros.pipeline.backends import onnxruntime_providers, tensorrt_available

    if variant == "onnxruntime":
        providers = onnxruntime_providers(device)
        if not providers:
            return "onnxruntime is not installed"
        if device.type == "cuda" and providers == ["CPUExecutionProvider"]:
            return "this onnxruntime build has no CUDA execution provider"
    if variant == "tensorrt" and not tensorrt_available():
        return "torch-tensorrt is not importable (or no CUDA device)"
    return None


def frame(size) -> tuple[np.ndarray, str]:
    """A synthroad obstacle frame (realistic post-processing load), or noise when it cannot render."""
    try:
        from csl_ros.data.synthroad import render_frame

        return render_frame(10_000_005, size=size, obstacles="obstacle").image, "synthroad obstacle frame"
    except Exception as exc:  # noqa: BLE001 - e.g. OpenCV missing on the machine
        rng = np.random.default_rng(0)
        return rng.integers(0, 255, (*size, 3), dtype=np.uint8), f"uniform noise (synthroad: {exc})"


def build_detector(preset: str, size, backend: str, precision: str, device: str, cache: str):
    from csl_ros.config import DetectorConfig
    from csl_ros.pipeline import Detector

    # one scale: the backends are compared on one pass (bench/pipeline.py measures test_scale's second)
    cfg = DetectorConfig(scheme="2", input_height=size[0], input_width=size[1], device=device, backend=backend,
                         precision=precision, engine_cache_dir=cache, test_scale=1.0)
    if preset == "shipped":
        return Detector.from_config(cfg)
    from csl_ros.model import build_student, get_preset
    from csl_ros.teachers.teacher import build_teacher

    torch.manual_seed(0)
    student = build_student(get_preset(preset, distill_channels=0))
    return Detector(cfg, student=student, teacher=build_teacher(cfg.teacher, device=device))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _mib(device, allocated=False) -> float | None:
    if device.type != "cuda":
        return None
    return (torch.cuda.memory_allocated(device) if allocated else torch.cuda.max_memory_allocated(device)) / 2 ** 20


def time_frames(fn, frames: int, warmup: int, device) -> dict:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(frames):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1000)
    return {"fps": 1000 / statistics.mean(times), "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)), "frames": frames}


def run_detector_row(preset, variant, size, args, device, cache, image) -> dict:
    backend, precision = VARIANTS[variant]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    det = build_detector(preset, size, backend, precision, str(device), cache)
    det(image)  # first call: compile / engine build / CUDA graph capture
    row = {"build_s": time.perf_counter() - t, "backend_used": det.backends,
           "fallback": "; ".join(n.fallback_reason for n in (det.network, det.teacher_network)
                                 if n is not None and n.fallback_reason) or None}
    per_frame_stages: list[dict[str, float]] = []

    def frame_and_stages():
        per_frame_stages.append(det(image).timings_ms)  # the detector's own per-stage timer (CUDA events)

    row.update(time_frames(frame_and_stages, args.frames, args.warmup, device))
    timed = per_frame_stages[-args.frames:]   # the timed frames alone, as fps and p50 (warm-up left out)
    names = dict.fromkeys(n for t in timed for n in t)
    row["stages_ms"] = {n: sum(t.get(n, 0.0) for t in timed) / len(timed) for n in names}
    row["peak_mib"] = _mib(device)
    if args.soak_frames and preset == "shipped" and variant in ("eager fp32", "eager fp16") and size == args.sizes[-1]:
        before = _mib(device, allocated=True)
        for _ in range(args.soak_frames):
            det(image)
        _sync(device)
        row.update(soak_frames=args.soak_frames, allocated_before_mib=before, allocated_after_soak_mib=_mib(
            device, allocated=True), peak_after_soak_mib=_mib(device))
    det.close()
    return row


def run_hf_row(size, args, device) -> dict:
    try:
        import transformers  # noqa: F401  (optional on the GPU machine)
    except Exception as exc:  # noqa: BLE001
        return {"status": f"not available (transformers: {type(exc).__name__})"}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pipeline import hf_mask2former  # the same reference model as the CPU benchmark

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    forward = hf_mask2former(device)
    x = torch.randn(1, 3, *size, device=device)
    with torch.inference_mode():
        forward(x)
        row = {"build_s": time.perf_counter() - t}
        row.update(time_frames(lambda: forward(x), args.frames, args.warmup, device))
    row["peak_mib"] = _mib(device)
    del forward
    return row


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# GPU suite ({'dry run, CPU' if result['dry_run'] else env['gpu']})", "",
             f"`{result['command']}` on {result['date']}: torch {env['torch']} (CUDA {env['cuda']}), Python "
             f"{env['python']}, {env['cpu_count']} CPU cores; onnxruntime {env['onnxruntime'] or 'missing'}, "
             f"transformers {env['transformers'] or 'missing'}, torch-tensorrt {env['torch_tensorrt'] or 'missing'}. "
             f"Input: {result['frame']}. {result['frames']} timed frames per row after {result['warmup']} warm-up.", "",
             "| size | model | variant | backends used | fps | p50 ms | p99 ms | peak MiB | build s | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, p=1: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['model']} | {r['variant']} | {r.get('backend_used', '-')} | {f(r.get('fps'))} | "
                     f"{f(r.get('p50_ms'))} | {f(r.get('p99_ms'))} | {f(r.get('peak_mib'), 0)} | {f(r.get('build_s'))} | "
                     f"{r['status']}{'; fell back: ' + r['fallback'] if r.get('fallback') else ''} |")
    soaks = [r for r in result["rows"] if "soak_frames" in r]
    if soaks:
        lines += ["", "| size | model | variant | frames | allocated before MiB | allocated after MiB | peak after MiB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['size']} | {r['model']} | {r['variant']} | {r['soak_frames']} | {f(r['allocated_before_mib'])} | "
                  f"{f(r['allocated_after_soak_mib'])} | {f(r['peak_after_soak_mib'])} |" for r in soaks]
    staged = [r for r in result["rows"] if r.get("stages_ms")]
    if staged:  # where a frame's time goes: the detector's stages; "total" is their sum, not the wall time
        names = list(dict.fromkeys(n for r in staged for n in r["stages_ms"]))
        lines += ["", "Mean milliseconds per frame by detector stage (CUDA events on a GPU):", "",
                  "| size | model | variant | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        lines += [f"| {r['size']} | {r['model']} | {r['variant']} | "
                  + " | ".join(f(r["stages_ms"].get(n), 2) for n in names) + " |" for r in staged]
    lines += ["", "## Targets (largest size)", ""]
    lines += [f"* {t['name']}: {t['value']} -> **{t['verdict']}**" for t in result["targets"]]
    return "\n".join(lines) + "\n"


def targets(rows: list[dict], size: str) -> list[dict]:
    shipped = [r for r in rows if r["size"] == size and r["model"] == "shipped default" and r.get("fps")]
    hf = next((r for r in rows if r["size"] == size and r["model"].startswith("HF") and r.get("fps")), None)
    if not shipped:
        return [{"name": "shipped default", "value": "no row ran", "verdict": "not measured"}]
    best = max(shipped, key=lambda r: r["fps"])
    out = [{"name": f"shipped default frames/s >= {TARGET_FPS:.0f} (best: {best['variant']})",
            "value": f"{best['fps']:.1f}", "verdict": "met" if best["fps"] >= TARGET_FPS else "missed"},
           {"name": f"shipped default p99 < {TARGET_P99_MS:.0f} ms ({best['variant']})",
            "value": f"{best['p99_ms']:.1f} ms", "verdict": "met" if best["p99_ms"] < TARGET_P99_MS else "missed"}]
    if hf:
        ratio = best["fps"] / hf["fps"]
        out.append({"name": f"shipped default >= {TARGET_VS_HF:.0f}x HF Mask2Former R-50 frames/s",
                    "value": f"{ratio:.1f}x", "verdict": "met" if ratio >= TARGET_VS_HF else "missed"})
    else:
        out.append({"name": "vs HF Mask2Former R-50", "value": "reference not available", "verdict": "not measured"})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for gpu_suite.json and gpu_suite.md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, 64x128, a few frames: the same code path")
    ap.add_argument("--sizes", default="512x1024,1024x2048", help="comma-separated frame sizes HxW in pixels")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated variants (default: all of {', '.join(VARIANTS)})")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated models: shipped (the shipped default), r50_paper")
    ap.add_argument("--frames", type=int, default=200, help="timed frames per row (default 200)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed warm-up frames per row (default 10)")
    ap.add_argument("--soak-frames", type=int, default=2000, help="frames before reading the memory still allocated (default 2000; 0 = off)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting rows after this many seconds")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.dry_run:
        device = torch.device("cpu")
        args.sizes, args.frames, args.warmup, args.soak_frames = "64x128", 3, 1, 5
    elif not torch.cuda.is_available():
        print("gpu_suite: no CUDA device on this machine (use --dry-run to exercise the code on CPU)",
              file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    args.sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"gpu_suite: unknown variant(s) {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="csl_gpu_suite_")
    t0 = time.monotonic()
    env = environment()
    print(json.dumps(env))
    rows = []
    for size in args.sizes:
        image, frame_kind = frame(size)
        s = f"{size[0]}x{size[1]}"
        jobs = [("HF Mask2Former R-50 (reference)", "eager fp32")] + [
            ("shipped default" if p == "shipped" else p, v) for p in args.presets.split(",") for v in variants]
        for model, variant in jobs:
            row = {"size": s, "model": model, "variant": variant}
            reason = None if model.startswith("HF") else unavailable_reason(variant, device)
            if reason:
                row["status"] = f"not available ({reason})"
            elif time.monotonic() - t0 > args.budget_s:
                row["status"] = "skipped (time budget spent)"
            else:
                try:
                    if model.startswith("HF"):
                        row.update(run_hf_row(size, args, device))
                    else:
                        preset = "shipped" if model == "shipped default" else model
                        row.update(run_detector_row(preset, variant, size, args, device, cache, image))
                    row.setdefault("status", "ok")
                except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                    row["status"] = f"failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run,
              "environment": env, "frame": frame_kind, "frames": args.frames, "warmup": args.warmup,
              "rows": rows, "targets": targets(rows, f"{args.sizes[-1][0]}x{args.sizes[-1][1]}"),
              "ros_imported": "rclpy" in sys.modules, "wall_s": time.monotonic() - t0}
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1))
    (out / "gpu_suite.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / 'gpu_suite.json'} and {out / 'gpu_suite.md'} in {result['wall_s']:.0f} s")
    return 0 if any(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
