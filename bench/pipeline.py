"""Detector pipeline speed on this machine, every backend side by side: ms per stage, frames/s, the
post-processing share and the ratios behind the speed targets, in one run.

    python bench/pipeline.py [--sizes 512x1024,1024x2048] [--repeats 3]
        [--presets shipped,r18_fast,r50_paper] [--backends eager,torchscript,compile,onnxruntime]
        [--json FILE]

For each input size (network size = image size, as for full-resolution evaluation):
  * HF transformers Mask2Former R-50 (100 queries, MSDeformAttn pixel decoder, random init, built from
    a config: no download), forward pass, on the same device: the reference;
  * the pre-issue-15 eager default: the shipped default on the eager backend with the code paths as
    they were before issue 15 (``pre_issue_code``: the SML post-processing of test/sml_oracle.py, the
    teacher's separate argmax, the student decoder's 7 full-size predictions); same outputs;
  * the CSL detector (scheme 2, the shipped SML teacher; the shipped student or a preset with random
    weights, whose speed does not depend on the weights) on a synthroad obstacle frame, on every
    backend (student and teacher through the same backend; tensorrt added on CUDA when installed),
    and the shipped default as configured (backend auto), per stage; every row one pass (test_scale 1)
    except two: the shipped default with its second pass at test_scale 2 (the shipped setting), whose
    cost is printed as a ratio to the one-pass row (the second pass has its own networks, same backend),
    and that with ``teacher_flip`` (config/driving.yaml: the teacher's mirrored pass at each scale),
    printed as a ratio to the row without;
  * post-processing share = (assignment + fusion + instances) / total; the budget is < 5 % at 1024x2048.
Rows of one size run round robin (every row once per repeat), so that load on a shared machine hits
all of them alike; figures are medians after one warm-up. "build s" is the backend's preparation
(export, compile, trace) and its first call.
Targets printed at the end (issue 15): shipped default end to end <= 0.5x the pre-issue eager default;
r50_paper with its best backend <= 0.25x HF Mask2Former R-50 (student network and end to end).
"""
from __future__ import annotations

import argparse
import contextlib
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

import torch  # noqa: E402

STAGES = ("preprocess", "network", "teacher", "assignment", "fusion", "instances")
PRE_ISSUE = "eager, pre-issue code"


def hf_mask2former(device):
    """HF transformers' Mask2Former R-50 (random init, from a config), as ``f(images) -> outputs``."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, ResNetConfig
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "resnet is not a supported backbone" (it works; only Swin is listed)
    torch.manual_seed(0)
    cfg = Mask2FormerConfig(backbone_config=ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]),
                            num_queries=100, num_labels=19, use_pretrained_backbone=False)
    model = Mask2FormerForUniversalSegmentation(cfg).eval().to(device)
    return lambda x: model(pixel_values=x)


@contextlib.contextmanager
def pre_issue_code(student):
    """Run the code paths as they were before issue 15's speed-ups, with the same results:
    * the SML boundary suppression and dilated smoothing of test/sml_oracle.py;
    * the teacher's class map as a separate argmax over the logits (now: the SML max's indices);
    * the student's decoder making all 7 predictions at H/4 (now in eval: the final one only), which
      is its train-mode path (the student itself stays in eval mode: no auxiliary outputs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
    import sml_oracle

    from csl_ros.teachers import scores
    from csl_ros.teachers import teacher as teacher_module

    def smlc_with_argmax(logits, mean, std):
        s, _ = standardized(logits, mean, std)
        return s, logits.argmax(dim=1)

    saved = scores.boundary_suppression, scores.dilated_smoothing, teacher_module.standardized_max_logit
    standardized = saved[2]
    scores.boundary_suppression, scores.dilated_smoothing = sml_oracle.boundary_suppression, sml_oracle.dilated_smoothing
    teacher_module.standardized_max_logit = smlc_with_argmax
    student.transformer_decoder.train()
    try:
        yield
    finally:
        scores.boundary_suppression, scores.dilated_smoothing, teacher_module.standardized_max_logit = saved
        student.transformer_decoder.eval()


class DetectorRow:
    """One detector configuration: ``step()`` runs one frame and keeps its per-stage timings."""

    def __init__(self, preset, size, backend, cache, device, pre_issue=False, test_scale=1.0, teacher_flip=False):
        from csl_ros.config import DetectorConfig
        from csl_ros.data.synthroad import render_frame
        from csl_ros.model import build_student, get_preset, load_checkpoint
        from csl_ros.pipeline import Detector
        from csl_ros.shipped import resolve_shipped
        from csl_ros.teachers.teacher import build_teacher

        self.preset, self.pre_issue = preset, pre_issue
        # one scale but in the test_scale row: the backends are compared on one pass
        cfg = DetectorConfig(scheme="2", input_height=size[0], input_width=size[1], device=device,
                             backend=backend, engine_cache_dir=cache, test_scale=test_scale,
                             teacher_flip=teacher_flip)
        model_hash = ""
        if preset == "shipped":
            loaded = load_checkpoint(resolve_shipped("student_ca"))
            student, model_hash = loaded.model, loaded.sha256
        else:
            torch.manual_seed(0)
            student = build_student(get_preset(preset, distill_channels=0))
        teacher = build_teacher(cfg.teacher, segmenter_path="", stats_path="", device=device)
        self.student = student
        t = time.perf_counter()
        self.detector = Detector(cfg, student=student, teacher=teacher, model_hash=model_hash)
        self.image = render_frame(10_000_005, size=size, obstacles="obstacle").image
        self.step()  # warm-up (and, for compile, the compilation), counted in the build time
        self.build_s = time.perf_counter() - t
        self.runs = []
        self.requested, self.test_scale, self.teacher_flip = backend, test_scale, teacher_flip
        self.label = PRE_ISSUE if pre_issue else (
            f"auto -> {self.detector.backend}" if backend == "auto" else self.detector.backend)
        if test_scale != 1.0:
            self.label += f", test_scale {test_scale:g}"
        if teacher_flip:
            self.label += ", teacher flip"

    def step(self):
        with pre_issue_code(self.student) if self.pre_issue else contextlib.nullcontext():
            timings = self.detector(self.image).timings_ms
        if hasattr(self, "runs"):
            self.runs.append(timings)

    def medians(self):
        return {k: statistics.median(r.get(k, 0.0) for r in self.runs) for k in (*STAGES, "total")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512x1024,1024x2048",
                    help="comma-separated frame sizes HxW in pixels (default 512x1024,1024x2048)")
    ap.add_argument("--presets", default="shipped,r18_fast,r50_paper",
                    help="student presets; 'shipped' = the shipped student_ca (r18_lite) with its weights")
    ap.add_argument("--backends", default="eager,torchscript,compile,onnxruntime",
                    help="comma-separated inference back ends of every preset (default "
                         "eager,torchscript,compile,onnxruntime; tensorrt is added on CUDA when installed)")
    ap.add_argument("--repeats", type=int, default=3, help="number of timed repetitions (default 3)")
    ap.add_argument("--device", default="auto", help="torch device: auto (cuda when present), cpu, cuda")
    ap.add_argument("--json", default="", help="also write every figure to this JSON file")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else (
        "cpu" if args.device == "auto" else args.device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, device {device}")
    backends = args.backends.split(",")
    if device.startswith("cuda"):
        from csl_ros.pipeline.backends import tensorrt_available

        if tensorrt_available() and "tensorrt" not in backends:
            backends.append("tensorrt")
    cache = tempfile.mkdtemp(prefix="csl_bench_engines_")
    results = {"machine": platform.machine(), "torch": torch.__version__, "device": device,
               "threads": torch.get_num_threads(), "repeats": args.repeats, "sizes": {}}
    from csl_ros.config import DetectorConfig

    shipped_scale = DetectorConfig().test_scale   # the schema default is the shipped student's
    for s in args.sizes.split(","):
        size = tuple(int(v) for v in s.split("x"))
        hf = hf_mask2former(device)
        x = torch.randn(1, 3, *size, device=device)
        rows = [DetectorRow("shipped", size, "eager", cache, device, pre_issue=True),
                DetectorRow("shipped", size, "auto", cache, device)]
        if shipped_scale != 1.0:
            rows.append(DetectorRow("shipped", size, "auto", cache, device, test_scale=shipped_scale))
        # config/driving.yaml's teacher_flip: the teacher's second (mirrored) pass at each scale
        rows.append(DetectorRow("shipped", size, "auto", cache, device, test_scale=shipped_scale, teacher_flip=True))
        for preset in args.presets.split(","):
            for backend in backends:
                try:
                    rows.append(DetectorRow(preset, size, backend, cache, device))
                except Exception as exc:  # noqa: BLE001 - a backend that cannot run is a row saying why
                    print(f"{s} {preset} {backend}: not available ({type(exc).__name__}: {exc})")
        hf_ms = []
        with torch.inference_mode():
            hf(x)
            for _ in range(args.repeats):  # round robin: every row, then the reference, per repeat
                for row in rows:
                    row.step()
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t = time.perf_counter()
                hf(x)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                hf_ms.append((time.perf_counter() - t) * 1000)
        ref = statistics.median(hf_ms)
        del hf
        print(f"\n{s}: HF transformers Mask2Former R-50 (100 queries, MSDeformAttn) forward: {ref:.0f} ms "
              f"({1000 / ref:.2f} fps)")
        print(f"{'preset':>10} {'backend':>30} {'build s':>7} {'pre':>6} {'network':>8} {'teacher':>8} "
              f"{'assign':>7} {'fusion':>7} {'inst':>6} {'total':>8} {'fps':>6} {'post%':>6} {'net/HF':>7} "
              f"{'total/HF':>8}")
        table = []
        for row in rows:
            t = row.medians()
            post = t["assignment"] + t["fusion"] + t["instances"]
            entry = {"preset": row.preset, "backend": row.label, "requested": row.requested,
                     "test_scale": row.test_scale, "teacher_flip": row.teacher_flip,
                     "backends": row.detector.backends, "build_s": row.build_s, "ms": t,
                     "fps": 1000 / t["total"], "post_share": post / t["total"],
                     "network_vs_hf": t["network"] / ref, "total_vs_hf": t["total"] / ref}
            table.append(entry)
            print(f"{row.preset:>10} {row.label:>30} {row.build_s:7.1f} {t['preprocess']:6.1f} {t['network']:8.1f} "
                  f"{t['teacher']:8.1f} {t['assignment']:7.1f} {t['fusion']:7.1f} {t['instances']:6.1f} "
                  f"{t['total']:8.1f} {entry['fps']:6.2f} {100 * entry['post_share']:5.1f}% "
                  f"{entry['network_vs_hf']:6.2f}x {entry['total_vs_hf']:7.2f}x")
        for row in rows:
            row.detector.close()
        pre = next(e for e in table if e["backend"] == PRE_ISSUE)
        auto = next(e for e in table if e["requested"] == "auto" and e["preset"] == "shipped"
                    and e["test_scale"] == 1.0 and not e["teacher_flip"])
        summary = {"shipped_default_vs_pre_issue_eager": auto["ms"]["total"] / pre["ms"]["total"]}
        print(f"  shipped default, one pass ({auto['backends']}): {auto['ms']['total']:.0f} ms end to end = "
              f"{summary['shipped_default_vs_pre_issue_eager']:.2f}x the pre-issue eager default "
              f"({pre['ms']['total']:.0f} ms) [target <= 0.5x]")
        two = [e for e in table if e["requested"] == "auto" and e["test_scale"] != 1.0 and not e["teacher_flip"]]
        if two:
            summary["second_pass_vs_one_pass"] = two[0]["ms"]["total"] / auto["ms"]["total"]
            print(f"  with the second pass at test_scale {two[0]['test_scale']:g} (same backend): "
                  f"{two[0]['ms']['total']:.0f} ms = {summary['second_pass_vs_one_pass']:.2f}x the one-pass default")
        flip = next(e for e in table if e["teacher_flip"])
        base = two[0] if two else auto
        summary["teacher_flip_vs_without"] = flip["ms"]["total"] / base["ms"]["total"]
        print(f"  with teacher_flip (config/driving.yaml; the teacher's mirrored pass at each scale): "
              f"{flip['ms']['total']:.0f} ms = {summary['teacher_flip_vs_without']:.2f}x the same without "
              f"({base['ms']['total']:.0f} ms)")
        r50 = [e for e in table if e["preset"] == "r50_paper"]
        if r50:
            best = min(r50, key=lambda e: e["ms"]["total"])
            summary.update(r50_paper_best_backend=best["backend"], r50_paper_network_vs_hf=best["network_vs_hf"],
                           r50_paper_total_vs_hf=best["total_vs_hf"])
            print(f"  r50_paper, best backend {best['backend']}: student network {best['ms']['network']:.0f} ms = "
                  f"{best['network_vs_hf']:.2f}x HF Mask2Former R-50, detector end to end "
                  f"{best['ms']['total']:.0f} ms = {best['total_vs_hf']:.2f}x [target <= 0.25x]")
        results["sizes"][s] = {"hf_mask2former_r50_ms": ref, "rows": table, "summary": summary}
    print("\n'net/HF' = student network time / HF Mask2Former forward time; 'total/HF' = full CSL detector "
          "(student + teacher + post-processing) / HF forward; < 1 means ours is faster.")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
