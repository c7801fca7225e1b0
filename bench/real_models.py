"""Cost of the public Cityscapes teachers: parameters and CPU time per frame, random weights.

    python bench/real_models.py [--models segformer-b0,mask2former-swin-tiny] [--size 1024x2048]
                                [--repeats 2] [--threads 2]

No weights can be downloaded here, so each model is built from a ``transformers`` config of the
published architecture (SegFormer MiT-B0..B5 with the decode head of the Cityscapes checkpoints;
Mask2Former with 100 queries, 19 classes, R50 / Swin-T/S/B/L backbones, as the Cityscapes semantic
checkpoints) with **random weights**: the time of one teacher call is that of the real model of the
same architecture (weights do not change the arithmetic), the scores are meaningless. A teacher call
is what csl_ros runs per frame: normalisation, the network at ``--size`` (no resize), upsampling, and
for Mask2Former the class scores l_c and RbA; ``regions`` adds Eq. 2's inputs from the same pass.
A warm-up call at ``--warmup-size`` comes first (allocations, lazy initialisation), then the median
of ``--repeats`` calls at ``--size`` is printed as a markdown table (docs/real_models.md), each row
with the machine's 1-minute load average when it was measured: on a shared machine that is what the
milliseconds depend on.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Spin-waiting OpenMP threads make torch many times slower when the cores are shared (as the tests'
# conftest and docs/performance.md do); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SEGFORMER = {  # MiT variants (SegFormer paper, Table 6): hidden sizes, depths, decoder width
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768), "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768), "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768)}
SWIN = {  # embed dim, depths, heads, window (Swin paper; Mask2Former's Cityscapes configs)
    "tiny": (96, [2, 2, 6, 2], [3, 6, 12, 24], 7), "small": (96, [2, 2, 18, 2], [3, 6, 12, 24], 7),
    "base": (128, [2, 2, 18, 2], [4, 8, 16, 32], 12), "large": (192, [2, 2, 18, 2], [6, 12, 24, 48], 12)}
CITYSCAPES_CLASSES = 19


def build(name: str):
    """A random-weight transformers model of catalogue architecture ``name``."""
    import transformers as tf

    labels = {"id2label": {i: str(i) for i in range(CITYSCAPES_CLASSES)},
              "label2id": {str(i): i for i in range(CITYSCAPES_CLASSES)}}
    if name.startswith("segformer-"):
        hidden, depths, dec = SEGFORMER[name.split("-")[1]]
        return "segformer", tf.SegformerForSemanticSegmentation(tf.SegformerConfig(
            hidden_sizes=hidden, depths=depths, decoder_hidden_size=dec, num_labels=CITYSCAPES_CLASSES,
            **labels))
    if name.startswith("mask2former-"):
        parts = name.split("-")  # mask2former-r50 | mask2former-swin-<tiny|small|base|large>
        feats = ["stage1", "stage2", "stage3", "stage4"]
        if parts[1] == "r50":
            backbone = tf.ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck",
                                       hidden_sizes=[256, 512, 1024, 2048], out_features=feats)
        else:
            embed, depths, heads, window = SWIN[parts[2]]
            backbone = tf.SwinConfig(embed_dim=embed, depths=depths, num_heads=heads, window_size=window,
                                     out_features=feats)
        return "mask2former", tf.Mask2FormerForUniversalSegmentation(tf.Mask2FormerConfig(
            backbone_config=backbone, num_queries=100, num_labels=CITYSCAPES_CLASSES, **labels))
    raise ValueError(f"unknown model {name!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="segformer-b0,segformer-b2,segformer-b5,mask2former-r50,"
                                        "mask2former-swin-tiny,mask2former-swin-large")
    ap.add_argument("--size", default="1024x2048", help="network input HxW (default 1024x2048)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--warmup-size", default="256x512", help="HxW of the warm-up call")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    import torch

    from csl_ros.teachers.hf import HFSegmenter, Mask2FormerRegions, Preprocessing
    from csl_ros.teachers.scores import rba_score

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.lower().split("x"))
    print(f"# {args.device}, torch {torch.__version__}, {args.threads} thread(s), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, input {h}x{w}, "
          f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} core(s)")
    print("| model (random weights) | parameters | teacher call, ms (median) | + Mask2Former regions, ms | load |")
    print("|---|---:|---:|---:|---:|")
    x = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, device=args.device)
    wh, ww = (int(v) for v in args.warmup_size.lower().split("x"))
    warm = torch.randint(0, 256, (1, 3, wh, ww), dtype=torch.uint8, device=args.device)
    for name in args.models.split(","):
        torch.manual_seed(0)
        kind, net = build(name)
        params = sum(p.numel() for p in net.parameters())
        model = HFSegmenter(net, kind, Preprocessing(size_divisor=32 if kind == "mask2former" else 0),
                            Path(name), [str(i) for i in range(CITYSCAPES_CLASSES)], "random").to(args.device)
        regions = Mask2FormerRegions(model, shared=True) if kind == "mask2former" else None
        times, region_times = [], []
        with torch.inference_mode():
            if regions is not None:
                model(warm)
                regions(warm)
            else:
                model(warm)
            load = os.getloadavg()[0]
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                scores = model(x)
                if kind == "mask2former":
                    rba_score(scores)
                if args.device != "cpu":
                    torch.cuda.synchronize()
                t1 = time.perf_counter()
                if regions is not None:
                    regions(x)
                t2 = time.perf_counter()
                times.append(1000 * (t1 - t0))
                region_times.append(1000 * (t2 - t1))
        reg = f"{statistics.median(region_times):.0f}" if regions is not None else "–"
        load = max(load, os.getloadavg()[0])
        print(f"| {name} | {params / 1e6:.1f} M | {statistics.median(times):.0f} | {reg} | {load:.1f} |",
              flush=True)
        del model, net
    print(f"# load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
