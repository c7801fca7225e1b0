"""Benchmark: synthroad frames/s at 512x1024 on one CPU core.

Pins the process to one core and limits numpy/OpenCV to one thread, warms the process-wide caches
(noise tiles, facade and vehicle textures) on other seeds, then renders fresh scenes (a new world
per frame, every seed unseen) for each obstacle mode, and a continuous drive with render_sequence.

Reference, measured in the same run on the same frames: lossless PNG encoding of the frame's image and
trainId map with OpenCV (what the Cityscapes writer spends per frame before touching the disk). The
ratio says how rendering compares with merely storing a frame.

Frames/s are reported from process CPU time (robust when the machine is shared) and from wall time.
Usage: python bench/synthroad.py [--frames 30] [--size 512x1024] [--core 0]
"""
from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import time  # noqa: E402

import cv2  # noqa: E402

from csl_ros.cli import image_size_arg  # noqa: E402
from csl_ros.data.synthroad import render_frame, render_sequence  # noqa: E402


def _clock():
    return time.process_time(), time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=30, help="number of frames per mode (default 30)")
    ap.add_argument("--size", type=image_size_arg, default=(512, 1024),
                    help="frame size HxW in pixels (default 512x1024)")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin to (-1: no pinning)")
    args = ap.parse_args()
    size = args.size
    cv2.setNumThreads(1)
    if args.core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    print(f"synthroad benchmark: {size[0]}x{size[1]}, {args.frames} frames per mode, "
          f"affinity {sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}, "
          f"cv2 threads {cv2.getNumThreads()}, load average {os.getloadavg()[0]:.1f}")

    c0, w0 = _clock()
    render_frame(99_999, size, "obstacle")
    c1, w1 = _clock()
    print(f"first frame (cold caches): {1000 * (c1 - c0):.0f} ms CPU")
    for s in range(20):
        render_frame(100_000 + s, size, ("none", "obstacle", "anomaly")[s % 3])

    rows = []
    stages: dict[str, float] = {}
    kept = []
    for mode in ("none", "obstacle", "anomaly"):
        c0, w0 = _clock()
        for i in range(args.frames):
            f = render_frame(1000 * (1 + ("none", "obstacle", "anomaly").index(mode)) + i, size, mode, timings=stages)
            if i < 10:
                kept.append(f)
        c1, w1 = _clock()
        rows.append((f"render_frame obstacles={mode}", args.frames, c1 - c0, w1 - w0))
    n_seq = args.frames * 2
    c0, w0 = _clock()
    for f in render_sequence(4242, n_seq, size, "obstacle"):
        pass
    c1, w1 = _clock()
    rows.append(("render_sequence (10 m/s, 10 fps)", n_seq, c1 - c0, w1 - w0))

    # Reference: PNG encoding of the same frames (image + trainIds), as the Cityscapes writer does.
    reps = max(1, (3 * args.frames) // len(kept))
    c0, w0 = _clock()
    for _ in range(reps):
        for f in kept:
            cv2.imencode(".png", cv2.cvtColor(f.image, cv2.COLOR_RGB2BGR))
            cv2.imencode(".png", f.train_ids)
    c1, w1 = _clock()
    ref = ("reference: PNG-encode image+trainIds", reps * len(kept), c1 - c0, w1 - w0)

    print()
    print(f"{'what':42s} {'frames':>6s} {'CPU fps':>8s} {'wall fps':>8s} {'ms/frame CPU':>13s} {'vs reference':>12s}")
    ref_fps = ref[1] / ref[2]
    for name, n, cpu, wall in rows + [ref]:
        fps = n / cpu
        print(f"{name:42s} {n:6d} {fps:8.1f} {n / wall:8.1f} {1000 * cpu / n:13.1f} {fps / ref_fps:11.2f}x")
    total_frames = 3 * args.frames
    print("\nrender_frame CPU ms per stage (mean over all modes):")
    for k, v in stages.items():
        print(f"  {k:12s} {1000 * v / total_frames:6.1f}")
    mean_fps = total_frames / sum(r[2] for r in rows[:3])
    print(f"\nrender_frame mean: {mean_fps:.1f} frames/s on one core "
          f"({'meets' if mean_fps >= 10 else 'BELOW'} the 10 frames/s target); "
          f"PNG-encode reference {ref_fps:.1f} frames/s, ratio {mean_fps / ref_fps:.2f}")


if __name__ == "__main__":
    main()
