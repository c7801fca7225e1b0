"""Detector pipeline speed on this machine: ms per stage, frames/s and the post-processing share.

    python bench/pipeline.py [--sizes 512x1024,1024x2048] [--repeats 3] [--presets r18_fast,r50_paper]

For each input size (network size = image size, as for full-resolution evaluation) and student preset:
  * the CSL detector (scheme 2, the shipped SML teacher; the shipped student or a preset with random
    weights, whose speed does not depend on the weights) on a synthroad obstacle frame, on the eager
    backend and on the frozen-TorchScript + channels-last backend
    (BatchNorm folded into the convolutions), per stage;
  * post-processing share = (assignment + fusion + instances) / total; the budget is < 5 % at 1024x2048;
  * the HF transformers Mask2Former (R-50, 100 queries, random init, built from config) forward pass
    in the same run, as the reference, and the ratio.
On a CUDA machine it also reports eager vs TensorRT fp16 frames/s at 1024x2048 when torch-tensorrt is
installed.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time

import numpy as np
import torch


def hf_mask2former_ms(size, repeats):
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig

    cfg = Mask2FormerConfig(backbone_config=ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]),
                            num_queries=100, num_labels=19, use_pretrained_backbone=False)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    x = torch.randn(1, 3, *size)
    with torch.inference_mode():
        model(pixel_values=x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(pixel_values=x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def detector_ms(preset, size, backend, repeats, cache, device):
    """Median per-stage timings of the detector on a synthroad obstacle frame of ``size``. The teacher is
    the shipped default (LR-ASPP segmenter, SML score: the real per-frame cost, with realistic score
    maps for the post-processing); the student is the shipped one for ``preset="shipped"``, else the
    preset with random weights (speed does not depend on the weights)."""
    from csl_ros.config import DetectorConfig
    from csl_ros.data.synthroad import render_frame
    from csl_ros.model import build_student, get_preset, load_checkpoint
    from csl_ros.pipeline import Detector
    from csl_ros.shipped import resolve_shipped
    from csl_ros.teachers.teacher import build_teacher

    cfg = DetectorConfig(scheme="2", input_height=size[0], input_width=size[1], device=device,
                         backend=backend, engine_cache_dir=cache)
    if preset == "shipped":
        student = load_checkpoint(resolve_shipped("student_ca")).model
    else:
        torch.manual_seed(0)
        student = build_student(get_preset(preset, distill_channels=0))
    teacher = build_teacher(cfg.teacher, segmenter_path="", stats_path="", device=device)
    det = Detector(cfg, student=student, teacher=teacher)
    img = render_frame(10_000_005, size=size, obstacles="obstacle").image
    det(img)
    runs = [det(img).timings_ms for _ in range(repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return med, det.backend


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512x1024,1024x2048",
                    help="comma-separated frame sizes HxW in pixels (default 512x1024,1024x2048)")
    ap.add_argument("--presets", default="shipped,r18_fast,r50_paper",
                    help="student presets; 'shipped' = the shipped student_ca (r18_lite) with its weights")
    ap.add_argument("--backends", default="eager,torchscript",
                    help="comma-separated inference back ends (default eager,torchscript)")
    ap.add_argument("--repeats", type=int, default=3, help="number of timed repetitions (default 3)")
    ap.add_argument("--device", default="auto", help="torch device: auto (cuda when present), cpu, cuda")
    args = ap.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, device {device}")
    print("CPU optimisations on the torchscript backend: channels-last memory format, frozen TorchScript "
          "(BatchNorm folded into convolutions, optimize_for_inference)\n")
    backends = args.backends.split(",")
    if device.startswith("cuda"):
        from csl_ros.pipeline.backends import tensorrt_available

        if tensorrt_available():
            backends.append("tensorrt")
    cache = tempfile.mkdtemp(prefix="csl_bench_engines_")
    header = (f"{'size':>10} {'preset':>10} {'backend':>12} {'pre':>7} {'network':>8} {'teacher':>8} "
              f"{'assign':>7} {'fusion':>7} {'inst':>7} {'total':>8} {'fps':>6} {'post%':>6} {'vs HF M2F':>9}")
    for s in args.sizes.split(","):
        size = tuple(int(v) for v in s.split("x"))
        ref = hf_mask2former_ms(size, args.repeats) if device == "cpu" else None
        if ref is not None:
            print(f"{s}: HF transformers Mask2Former R-50 (100 queries, MSDeformAttn) forward: {ref:.0f} ms "
                  f"({1000 / ref:.2f} fps)")
        print(header)
        for preset in args.presets.split(","):
            for backend in backends:
                t, used = detector_ms(preset, size, backend, args.repeats, cache, device)
                post = t.get("assignment", 0) + t.get("fusion", 0) + t.get("instances", 0)
                ratio = f"{ref / t['total']:.2f}x" if ref else "-"
                print(f"{s:>10} {preset:>10} {used:>12} {t['preprocess']:7.1f} {t.get('network', 0):8.1f} "
                      f"{t.get('teacher', 0):8.1f} {t.get('assignment', 0):7.1f} {t.get('fusion', 0):7.1f} "
                      f"{t.get('instances', 0):7.1f} {t['total']:8.1f} {1000 / t['total']:6.2f} "
                      f"{100 * post / t['total']:5.1f}% {ratio:>9}")
        print()
    print("'vs HF M2F' = HF Mask2Former forward time / full CSL detector time (network + teacher + "
          "post-processing); > 1 means the detector is faster.")


if __name__ == "__main__":
    main()
