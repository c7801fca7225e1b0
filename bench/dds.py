"""Best-effort camera frames between two processes over Fast DDS: how many arrive, per configuration.

    python bench/dds.py [--frames 20] [--size 1024x2048] [--period 0.2]

For each pair (camera publisher settings, subscriber settings) and each discovery range (unset,
LOCALHOST), a publisher process sends ``--frames`` rgb8 images of ``--size`` with the sensor-data QoS
(best effort, depth 5) every ``--period`` s to a subscriber process with the same QoS, which counts
what it received; the publisher also reports whether it matched the subscriber at all. Settings:
``default`` (no Fast DDS variable: what `ros2 topic ...` or a user's rviz2 run with), ``csl_profile``
(FASTDDS_DEFAULT_PROFILES_FILE = csl_ros's large-image profile, what csl_node selects itself) and
``LARGE_DATA`` (FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA, the previous setting). Prints a markdown table
(docs/ros.md, "Large images over DDS"). Each process gets its own random ROS domain.
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import textwrap
import time

PUBLISHER = textwrap.dedent("""
    import sys, time
    import numpy as np, rclpy
    from sensor_msgs.msg import Image
    from rclpy.qos import qos_profile_sensor_data
    n, h, w, period = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rclpy.init()
    node = rclpy.create_node("bench_camera")
    pub = node.create_publisher(Image, "/bench_dds/image", qos_profile_sensor_data)
    deadline = time.monotonic() + 20
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    matched = pub.get_subscription_count()
    time.sleep(1.0)
    data = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8).tobytes()
    for i in range(1, n + 1):
        msg = Image(height=h, width=w, encoding="rgb8", step=3 * w)
        msg.data = data
        msg.header.stamp.sec = i
        pub.publish(msg)
        time.sleep(period)
    time.sleep(2.0)
    print("matched", matched)
    rclpy.shutdown()
""")

SUBSCRIBER = textwrap.dedent("""
    import sys, time
    import rclpy
    from sensor_msgs.msg import Image
    from rclpy.qos import qos_profile_sensor_data
    rclpy.init()
    node = rclpy.create_node("bench_detector")
    got = set()
    node.create_subscription(Image, "/bench_dds/image", lambda m: got.add(m.header.stamp.sec), qos_profile_sensor_data)
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
    print("received", len(got))
    rclpy.shutdown()
""")


def settings() -> dict[str, dict[str, str]]:
    from csl_ros.ros.dds import PROFILE_FILE, PROFILE_VARIABLE

    return {"default": {}, "csl_profile": {PROFILE_VARIABLE: PROFILE_FILE},
            "LARGE_DATA": {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("FASTDDS_", "FASTRTPS_")) and k != "ROS_AUTOMATIC_DISCOVERY_RANGE"}


def run_pair(pub_env: dict, sub_env: dict, discovery: str | None, args) -> tuple[int, int]:
    """(frames received, publisher matched 0/1)."""
    base = clean_env()
    base["ROS_DOMAIN_ID"] = str(random.randint(100, 230))
    if discovery:
        base["ROS_AUTOMATIC_DISCOVERY_RANGE"] = discovery
    h, w = args.size
    listen = 25.0 + args.frames * args.period
    sub = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(listen)], env={**base, **sub_env},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    pub = subprocess.run([sys.executable, "-c", PUBLISHER, str(args.frames), str(h), str(w), str(args.period)],
                         env={**base, **pub_env}, capture_output=True, text=True, timeout=listen + 30)
    out = sub.communicate(timeout=listen + 30)[0]
    received = int(next(line.split()[1] for line in out.splitlines() if line.startswith("received")))
    matched = int(next(line.split()[1] for line in pub.stdout.splitlines() if line.startswith("matched")))
    return received, matched


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", default="1024x2048", help="HxW of the rgb8 frames")
    ap.add_argument("--period", type=float, default=0.2, help="seconds between frames")
    args = ap.parse_args()
    args.size = tuple(int(v) for v in args.size.lower().split("x"))
    sets = settings()
    pairs = [("default", "default"), ("csl_profile", "csl_profile"), ("default", "csl_profile"),
             ("csl_profile", "default"), ("LARGE_DATA", "LARGE_DATA"), ("LARGE_DATA", "default")]
    h, w = args.size
    print(f"{args.frames} best-effort rgb8 frames of {w}x{h} ({3 * w * h / 2**20:.1f} MiB) every {args.period} s, "
          f"publisher and subscriber in two processes, rmw_fastrtps_cpp, {os.cpu_count()} CPU cores\n")
    print("| publisher | subscriber | discovery range | matched | received |")
    print("| --- | --- | --- | --- | --- |")
    for pub, sub in pairs:
        for discovery in (None, "LOCALHOST"):
            received, matched = run_pair(sets[pub], sets[sub], discovery, args)
            print(f"| {pub} | {sub} | {discovery or 'unset'} | {'yes' if matched else 'no'} | "
                  f"{received} of {args.frames} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
