"""Per-stage CPU latency of the CSL student presets against Hugging Face's Mask2Former, in one run.

    python bench/model.py [--size 512 1024] [--reps 3] [--threads N] [--presets r18_fast r50_paper]

Stages: backbone, pixel decoder, transformer decoder (incl. the per-layer heads), the scheme-1 head,
then CSL post-processing on one image: soft assignment (Eq. 2 at stride 4, labels upsampled to the
input size, 8-connected split) and structure-constrained fusion (Eq. 3, C = 1, at the input size).

Reference: transformers' Mask2FormerForUniversalSegmentation with a ResNet-50 backbone config,
100 queries, num_labels = 1 (the class-agnostic M2F), random init, built from a config (no download).
Its pixel decoder is MSDeformAttn (6 encoder layers), ours the paper's FPN. The same post-processing
functions are timed on its outputs. Models run round robin; times are medians over --reps runs after one warm-up; the ratio
column is ours / reference (< 1 = faster than the reference).
"""
from __future__ import annotations

import argparse
import os

# OpenMP threads busy-wait by default; on a shared 2-core machine that made two threads ~20x slower than
# one whenever another process held a core. Passive waiting keeps the numbers meaningful there.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import statistics
import time
import warnings
from collections import defaultdict

import torch


class StageTimer:
    """Forward pre/post hooks recording the wall time of named submodules."""

    def __init__(self, stages: dict[str, torch.nn.Module]):
        self.times: dict[str, list[float]] = defaultdict(list)
        self._start: dict[str, float] = {}
        self._handles = []
        for name, module in stages.items():
            if module is None:  # e.g. a preset without the scheme-1 head
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args):
            self._start[name] = time.perf_counter()
        return hook

    def _post(self, name):
        def hook(module, args, output):
            self.times[name].append(time.perf_counter() - self._start[name])
        return hook


class Runner:
    """One model plus its post-processing; ``step()`` runs one timed iteration."""

    def __init__(self, name: str, forward, stages: dict, to_outputs, distribution, params: int):
        self.name, self.forward, self.to_outputs, self.distribution = name, forward, to_outputs, distribution
        self.timer = StageTimer(stages)
        self.params = params
        self.times: dict[str, list[float]] = defaultdict(list)

    @torch.no_grad()
    def step(self, images: torch.Tensor) -> None:
        from csl_ros.model import soft_assign_logits, structure_constrained_fusion
        size = tuple(images.shape[-2:])
        start = time.perf_counter()
        out = self.forward(images)
        self.times["network total"].append(time.perf_counter() - start)
        region_logits, validity_logits = self.to_outputs(out)
        start = time.perf_counter()
        regions = soft_assign_logits(region_logits[0], validity_logits[0], out_size=size)
        self.times["soft assignment"].append(time.perf_counter() - start)
        start = time.perf_counter()
        structure_constrained_fusion(self.distribution(out, size), regions)
        self.times["fusion (SCF)"].append(time.perf_counter() - start)

    def medians(self) -> dict[str, float]:
        """Median ms per stage, the first (warm-up) iteration dropped."""
        result = {k: 1000.0 * statistics.median(v[1:]) for k, v in {**self.timer.times, **self.times}.items()}
        result["end to end"] = result["network total"] + result["soft assignment"] + result["fusion (SCF)"]
        return result


def student_runner(preset: str) -> Runner:
    from csl_ros.model import build_student, upsample_to_input
    torch.manual_seed(0)
    model = build_student(preset).eval()
    return Runner(preset, model,
                  {"backbone": model.backbone, "pixel decoder": model.pixel_decoder,
                   "transformer decoder": model.transformer_decoder, "scheme-1 head": model.distill_head},
                  lambda out: (out.region_logits, out.validity_logits),
                  lambda out, size: upsample_to_input(out.distribution[0], size),
                  sum(p.numel() for p in model.parameters()))


def hf_mask2former_runner() -> Runner:
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()  # "resnet is not a supported backbone" (it works; only Swin is listed)
    torch.manual_seed(0)
    backbone = ResNetConfig(depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048], layer_type="bottleneck",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_queries=100, num_labels=1,
                               use_pretrained_backbone=False)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    pixel = model.model.pixel_level_module
    # HF normalises outside the model (image processor); ours normalises inside, so do it here too.
    mean = torch.tensor([123.675, 116.280, 103.530]).view(1, 3, 1, 1)
    std = torch.tensor([58.395, 57.120, 57.375]).view(1, 3, 1, 1)
    return Runner("HF M2F R50", lambda images: model(pixel_values=(images - mean) / std),
                  {"backbone": pixel.encoder, "pixel decoder": pixel.decoder,
                   "transformer decoder": model.model.transformer_module},
                  lambda out: (out.masks_queries_logits, out.class_queries_logits),
                  # M2F has no per-pixel OOD head: fuse a stand-in map of the same size.
                  lambda out, size: torch.rand(1, *size),
                  sum(p.numel() for p in model.parameters()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"),
                        help="input size H W in pixels (default 512 1024)")
    parser.add_argument("--reps", type=int, default=3, help="number of timed repetitions per stage (default 3)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="number of torch CPU threads (default: torch's own)")
    parser.add_argument("--presets", nargs="+", default=["r18_fast", "r50_paper"],
                        help="student presets to time (default r18_fast r50_paper)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    images = torch.rand(1, 3, *args.size) * 255

    runners = [student_runner(p) for p in args.presets] + [hf_mask2former_runner()]
    # Round robin, so background load on a shared machine hits every model alike.
    for _ in range(args.reps + 1):
        for runner in runners:
            runner.step(images)
    columns = {r.name: r.medians() for r in runners}
    params = {r.name: r.params for r in runners}

    rows = ["backbone", "pixel decoder", "transformer decoder", "scheme-1 head", "network total",
            "soft assignment", "fusion (SCF)", "end to end"]
    names = list(columns)
    ref = "HF M2F R50"
    print(f"CPU latency, batch 1, {args.size[0]}x{args.size[1]}, {args.threads} threads, torch {torch.__version__}, "
          f"median of {args.reps} after 1 warm-up (ms)")
    header = f"{'stage':<22}" + "".join(f"{n:>14}" for n in names) + "".join(
        f"{n + '/ref':>16}" for n in names if n != ref)
    print(header)
    print("-" * len(header))
    for row in rows:
        cells = "".join(f"{columns[n][row]:>14.1f}" if row in columns[n] else f"{'-':>14}" for n in names)
        ratios = "".join(
            f"{columns[n][row] / columns[ref][row]:>16.2f}" if row in columns[n] and row in columns[ref]
            else f"{'-':>16}" for n in names if n != ref)
        print(f"{row:<22}{cells}{ratios}")
    print(f"{'parameters (M)':<22}" + "".join(f"{params[n] / 1e6:>14.1f}" for n in names))
    print("transformer decoder includes the per-layer prediction heads (region logits at 1/4 for masked attention); "
          "HF's pixel decoder is MSDeformAttn, ours the paper's FPN; post-processing rows run the same csl_ros "
          "functions on each model's outputs.")


if __name__ == "__main__":
    main()
