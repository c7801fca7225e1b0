"""SML post-processing speed: today's boundary suppression + dilated smoothing vs the pre-issue-15 ones.

    python bench/sml.py [--size 1024x2048] [--repeats 5]

Both run in the same process, alternately, on the shipped SML teacher's own standardized max logit
and class map of a synthroad obstacle frame (realistic boundaries). The reference is the oracle kept
in test/sml_oracle.py (max-pool morphology, 1-channel convolutions). Prints the median ms of each
step, the ratio reference / ours, and the largest absolute difference of the outputs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))


def _median_ms(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1024x2048", help="HxW of the frame and the teacher's output")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each step (median)")
    args = ap.parse_args()
    import sml_oracle

    from csl_ros.data.synthroad import render_frame
    from csl_ros.teachers import scores
    from csl_ros.teachers.teacher import build_teacher

    size = tuple(int(v) for v in args.size.split("x"))
    teacher = build_teacher("sml", device="cpu")
    image = torch.from_numpy(render_frame(10_000_005, size=size, obstacles="obstacle").image)
    with torch.inference_mode():
        logits = teacher.model(image.permute(2, 0, 1)[None]).float()
        mean, std, params = teacher._sml
        s, pred = scores.standardized_max_logit(logits, mean, std)
    width, iterations = params.get("boundary_width", 4), params.get("boundary_iterations", 4)
    print(f"{args.size}: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{int(scores.find_boundaries(pred).sum())} boundary pixels of {pred.numel()}")
    steps = {
        "boundary suppression": (lambda: sml_oracle.boundary_suppression(s, pred, width, iterations),
                                 lambda: scores.boundary_suppression(s, pred, width, iterations)),
        "dilated smoothing": (lambda: sml_oracle.dilated_smoothing(s), lambda: scores.dilated_smoothing(s)),
    }
    total_ref = total_ours = 0.0
    print(f"{'step':>22} {'reference ms':>13} {'ours ms':>8} {'ratio':>6} {'max |diff|':>10}")
    for name, (ref_fn, ours_fn) in steps.items():
        with torch.inference_mode():
            diff = float((ref_fn() - ours_fn()).abs().max())
            ref_ms, ours_ms = [], []
            for _ in range(args.repeats):  # alternate so that machine noise hits both alike
                ref_ms.append(_median_ms(ref_fn, 1))
                ours_ms.append(_median_ms(ours_fn, 1))
        r, o = statistics.median(ref_ms), statistics.median(ours_ms)
        total_ref, total_ours = total_ref + r, total_ours + o
        print(f"{name:>22} {r:13.1f} {o:8.1f} {r / o:5.1f}x {diff:10.2e}")
    print(f"{'both':>22} {total_ref:13.1f} {total_ours:8.1f} {total_ref / total_ours:5.1f}x")


if __name__ == "__main__":
    main()
