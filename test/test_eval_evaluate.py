"""``csl-ros evaluate``: in process (tiny random-weight detector and a model-free one), recorded node
outputs in a bag, sweeps on one network pass, frame accounting, the report, and --live against the
real ``csl_detector`` node over DDS."""
from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rosbags")

from csl_ros.cli import build_parser, main  # noqa: E402
from csl_ros.config import DetectorConfig  # noqa: E402
from csl_ros.data.loaders import Record, Synthroad  # noqa: E402
from csl_ros.eval import bag as B  # noqa: E402
from csl_ros.evaluate_cli import evaluate_command, instances_topic_for  # noqa: E402
from csl_ros.eval.metrics import evaluate as reference_evaluate  # noqa: E402
from csl_ros.eval.scoring import instance_counts, parse_sweep  # noqa: E402
from csl_ros.ros.testing import BrightnessDetector, private_ros_context  # noqa: E402

TINY = ["teacher=msp", "input_height=64", "input_width=128", "device=cpu", "backend=eager"]
N_FRAMES = 6


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory) -> Path:
    """6 synthroad obstacle-track frames at 128x256 written by `csl-ros bag convert`."""
    out = tmp_path_factory.mktemp("bags") / "drive"
    assert main(["bag", "convert", "--dataset", "synthroad", "--frames", str(N_FRAMES), "--size", "128x256",
                 "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def bag_frames(synth_bag):
    return list(B.read_bag(synth_bag))


def parse(*argv):
    return build_parser().parse_args(["evaluate", *argv])


def load(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


class Counting:
    """Wraps a detector factory and counts the frames the evaluator runs through the detector."""

    def __init__(self, factory):
        self.factory = factory
        self.calls = 0
        self.built = 0

    def __call__(self, cfg):
        inner = self.factory(cfg)
        self.built += 1
        outer = self

        class Wrapped:
            config = cfg

            def warmup(self):
                inner.warmup()

            def __call__(self, image, camera=None):
                outer.calls += 1
                return inner(image, camera)

            def close(self):
                inner.close()
        return Wrapped()


def brightness(cfg):
    return BrightnessDetector(cfg)


# --------------------------------------------------------------------------------------------------
# small pieces
# --------------------------------------------------------------------------------------------------

def test_parse_sweep_ranges_lists_and_errors():
    assert parse_sweep("score_threshold=0.3:0.9:0.1").values == (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    assert parse_sweep("score_threshold=0.5:0.5:0.1").values == (0.5,)
    assert parse_sweep("min_instance_area=50,100,200").values == (50, 100, 200)
    assert parse_sweep("min_instance_area=0:100:50").values == (0, 50, 100)
    assert parse_sweep("max_obstacle_height_m=0,1.5,3").values == (0.0, 1.5, 3.0)
    with pytest.raises(ValueError, match="only score_threshold, min_instance_area, max_obstacle_height_m"):
        parse_sweep("teacher=msp,sml")
    with pytest.raises(ValueError, match=r"outside \[0.0, 1.0\]"):
        parse_sweep("score_threshold=0.5:1.5:0.5")
    with pytest.raises(ValueError, match="not an integer"):
        parse_sweep("min_instance_area=10.5")
    with pytest.raises(ValueError, match="STEP > 0"):
        parse_sweep("score_threshold=0.9:0.3:0.1")
    with pytest.raises(ValueError, match="NAME="):
        parse_sweep("score_threshold")


def test_instance_counts_by_hand():
    labels = np.zeros((20, 30), np.uint8)
    labels[2:6, 2:6] = 1            # GT A: 16 px
    labels[10:14, 20:24] = 1        # GT B: 16 px
    labels[18, 0] = 1               # GT C: 1 px -> void (instsize 10)
    labels[:, 28:] = 255            # void strip
    inst = np.zeros((20, 30), np.uint16)
    inst[2:6, 2:5] = 1              # on A: precision 1 -> true, A detected
    inst[10:14, 14:22] = 2          # 8 px on B of 32: precision 0.25 -> false; B not detected
    inst[0:4, 28:30] = 3            # entirely void: not counted
    inst[18, 0:2] = 4               # on void GT C (1 px) + 1 background px: precision 0 -> false
    c = instance_counts(inst, labels, instsize=10)
    assert c == {"instances": 3, "false_instances": 2, "gt_components": 2, "gt_detected": 1,
                 "gt_fragments": 1}
    # fragmentation: A cut into two true instances counts two fragments for one detected component
    inst[2:6, 5] = 5
    inst[2:6, 2:5][:, 2] = 5
    c = instance_counts(inst, labels, instsize=10)
    assert c["gt_detected"] == 1 and c["gt_fragments"] == 2


def test_instances_topic_next_to_scores():
    assert instances_topic_for("/csl/camera/csl_detector/anomaly_score") == "/csl/camera/csl_detector/ood_instances"


# --------------------------------------------------------------------------------------------------
# in process, model-free detector: exact agreement with the metrics module
# --------------------------------------------------------------------------------------------------

def test_in_process_equals_direct_metrics(synth_bag, bag_frames, tmp_path):
    counting = Counting(brightness)
    out = tmp_path / "eval"
    assert evaluate_command(parse("--bag", str(synth_bag), "--out", str(out), "--quiet",
                                  "--set", "score_threshold=0.7", "--set", "min_instance_area=20"),
                            detector_factory=counting) == 0
    m = load(out)
    assert counting.built == 1 and counting.calls == N_FRAMES
    assert m["counts"] == {"images": 6, "labelled": 6, "scored": 6, "dropped": 0, "unlabelled_images": 0,
                           "unmatched_labels": 0}
    assert set(m["count_meanings"]) == set(m["counts"])
    # the same maps through csl_ros.eval.metrics directly
    det = BrightnessDetector(DetectorConfig())
    triples = [(f.frame_id, det(f.image).anomaly_map, f.labels) for f in bag_frames]
    ref = reference_evaluate(triples, track="obstacle", protocol="official")
    assert m["pixel"]["ap"] == pytest.approx(ref.pixel.ap, abs=1e-12)
    assert m["pixel"]["fpr95"] == pytest.approx(ref.pixel.fpr95, abs=1e-12)
    assert m["pixel"]["n_pos"] == sum(int((f.labels == 1).sum()) for f in bag_frames) > 0
    assert m["components"]["f1_mean"] == pytest.approx(ref.components.f1_mean, abs=1e-12)
    assert m["components"]["score_threshold"] == ref.components.score_threshold
    assert [r["frame_id"] for r in m["per_frame"]] == [f.frame_id for f in bag_frames]
    for row, refrow in zip(m["per_frame"], ref.per_frame):
        assert row["ap"] == refrow["ap"] and row["siou_gt"] == refrow["siou_gt"]
        tp = row["tp_px"]
        assert row["f1_at_threshold"] == pytest.approx(2 * tp / (2 * tp + row["fp_px"] + row["fn_px"]))
    assert m["config"]["score_threshold"] == 0.7 and m["run"]["backend"] == "brightness"
    assert m["run"]["mode"] == "in-process" and m["timing"]["frame_ms"]["n"] == N_FRAMES
    # histogram: every labelled pixel counted once
    assert sum(m["score_histogram"]["anomaly"]) == m["pixel"]["n_pos"]
    assert sum(m["score_histogram"]["in_distribution"]) == m["pixel"]["n_neg"]
    for name in ("report.md", "report.html", "per_frame.csv", "figures/pr_curve.png", "figures/roc_curve.png",
                 "figures/score_histogram.png", "figures/per_frame.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert len(m["worst_frames"]) == min(6, sum(r["f1_at_threshold"] is not None for r in m["per_frame"]))
    for w in m["worst_frames"]:
        assert (out / w["picture"]).is_file()
        assert w["picture"] in (out / "report.md").read_text() and w["picture"] in (out / "report.html").read_text()
    f1s = [w["f1_at_threshold"] for w in m["worst_frames"]]
    assert f1s == sorted(f1s)


def test_unlabelled_frame_is_counted_not_dropped(tmp_path):
    recs = list(Synthroad(seed=3, n_frames=5, size=(64, 128)))
    recs[2] = Record(recs[2].frame_id, recs[2].rgb, None, recs[2].camera)
    B.write_bag(recs, tmp_path / "bag")
    counting = Counting(brightness)
    out = tmp_path / "eval"
    evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet"), detector_factory=counting)
    m = load(out)
    assert m["counts"]["images"] == 5 and m["counts"]["labelled"] == 4 and m["counts"]["scored"] == 4
    assert m["counts"]["unlabelled_images"] == 1 and m["counts"]["dropped"] == 0
    assert counting.calls == 4
    assert recs[2].frame_id not in [r["frame_id"] for r in m["per_frame"]]
    assert any("1 image(s) have no ground truth" in n for n in m["notes"])


def test_the_report_names_the_settings_the_detector_ran(synth_bag, tmp_path):
    """A detector that took settings from its checkpoint (e.g. the threshold tuned for the configured
    teacher) is scored and reported with them, not with the schema defaults it was asked for."""
    import dataclasses

    def tuned(cfg):   # as Detector.from_config with a checkpoint carrying score_threshold 0.9
        return BrightnessDetector(dataclasses.replace(cfg, score_threshold=0.9))

    out = tmp_path / "eval"
    evaluate_command(parse("--bag", str(synth_bag), "--out", str(out), "--quiet", "--limit", "2"),
                     detector_factory=tuned)
    assert load(out)["config"]["score_threshold"] == 0.9


def test_limit_and_bad_inputs(synth_bag, tmp_path, capsys):
    counting = Counting(brightness)
    evaluate_command(parse("--bag", str(synth_bag), "--out", str(tmp_path / "a"), "--quiet", "--limit", "2"),
                     detector_factory=counting)
    assert counting.calls == 2 and load(tmp_path / "a")["counts"]["images"] == 2
    assert main(["evaluate", "--bag", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "bag not found" in capsys.readouterr().err
    assert main(["evaluate", "--bag", str(synth_bag), "--out", str(tmp_path / "c"), "--quiet",
                 "--set", f"student_path={tmp_path / 'missing.safetensors'}"]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["evaluate", "--bag", str(synth_bag), "--out", str(tmp_path / "d"),
                 "--sweep", "score_threshold=2:3:1"]) == 2


# --------------------------------------------------------------------------------------------------
# exit status: nothing scored, no label topic, dropped frames
# --------------------------------------------------------------------------------------------------

def test_bag_without_label_topic_exits_1_before_running_unless_no_labels(tmp_path, capsys):
    recs = [Record(r.frame_id, r.rgb, None, r.camera) for r in Synthroad(seed=4, n_frames=3, size=(64, 128))]
    B.write_bag(recs, tmp_path / "bag")
    counting = Counting(brightness)
    out = tmp_path / "eval"
    assert evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet"),
                            detector_factory=counting) == 1
    assert counting.built == 0                        # refused before any model was loaded
    m = load(out)
    assert m["counts"] == {"images": 3, "labelled": 0, "scored": 0}
    assert "no /eval/ood_labels topic" in m["run"]["failures"][0]
    assert "--no-labels" in capsys.readouterr().err
    # --no-labels: every image run through the detector and timed, no metric, exit 0
    assert evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet",
                                  "--no-labels"), detector_factory=counting) == 0
    m = load(out)
    assert counting.calls == 3 and m["counts"]["detector_runs"] == 3 and m["counts"]["scored"] == 0
    assert m["timing"]["frame_ms"]["n"] == 3 and m["run"]["failures"] == []
    assert m["pixel"]["ap"] is None and any("--no-labels" in n for n in m["notes"])


def test_no_frame_scored_exits_1(tmp_path, capsys):
    """A run that scores nothing (here: --limit stops before the only labelled frame) exits 1."""
    recs = list(Synthroad(seed=5, n_frames=3, size=(64, 128)))
    recs[0] = Record(recs[0].frame_id, recs[0].rgb, None, recs[0].camera)
    B.write_bag(recs, tmp_path / "bag")
    out = tmp_path / "eval"
    assert evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet", "--limit", "1"),
                            detector_factory=brightness) == 1
    m = load(out)
    assert m["counts"]["scored"] == 0 and m["counts"]["images"] == 1
    assert "no frame was scored" in m["run"]["failures"][0]
    assert "no frame was scored" in capsys.readouterr().err


def test_label_without_its_image_is_a_dropped_frame(tmp_path):
    """A damaged or missing image record leaves its label alone: counted, and exit 1 unless
    --allow-dropped."""
    from rosbags.rosbag2 import Writer

    recs = list(Synthroad(seed=6, n_frames=4, size=(64, 128)))
    ts = B.typestore()
    with Writer(tmp_path / "bag", version=8) as writer:
        img = writer.add_connection(B.IMAGE_TOPIC, B.IMAGE_T, typestore=ts)
        lab = writer.add_connection(B.LABEL_TOPIC, B.IMAGE_T, typestore=ts)
        for i, r in enumerate(recs):
            t = B.DEFAULT_START_NS + i * 10**8
            if i != 2:                                 # frame 2's image record is lost
                writer.write(img, t, ts.serialize_cdr(B.array_to_image_msg(r.rgb, t), B.IMAGE_T))
            writer.write(lab, t, ts.serialize_cdr(B.array_to_image_msg(r.label, t), B.IMAGE_T))
    out = tmp_path / "eval"
    assert evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet"),
                            detector_factory=brightness) == 1
    m = load(out)
    assert m["counts"]["scored"] == 3 and m["counts"]["unmatched_labels"] == 1
    assert "1 labels without an image" in m["run"]["failures"][0]
    assert any("1 label(s) have no image" in n for n in m["notes"])
    assert evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet",
                                  "--allow-dropped"), detector_factory=brightness) == 0


def test_corrupt_chunk_stops_the_evaluation_and_salvage_lists_it(tmp_path):
    """Flipped bytes inside an MCAP chunk: an error naming the file and offset (before: other metrics,
    exit 0); --salvage skips the chunk, lists it in metrics.json and the report, and exits 1 unless
    --allow-dropped."""
    import struct

    B.write_bag(list(Synthroad(seed=7, n_frames=8, size=(256, 512))), tmp_path / "bag")
    f = next((tmp_path / "bag").glob("*.mcap"))
    data = bytearray(f.read_bytes())
    pos, chunks = 8, []
    while data[pos] != 0x0F:                          # walk the records up to data end
        (length,) = struct.unpack_from("<Q", data, pos + 1)
        if data[pos] == 0x06:
            chunks.append((pos, length))
        pos += 9 + length
    off, length = chunks[1]
    data[off + 9 + length // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    out = tmp_path / "eval"
    with pytest.raises(B.BagError, match=rf"{f.name}: chunk at byte offset {off} .* fails its CRC check"):
        evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet"),
                         detector_factory=brightness)
    assert evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet", "--salvage"),
                            detector_factory=brightness) == 1
    m = load(out)
    (skipped,) = m["skipped_records"]
    assert skipped["byte_offset"] == off and m["counts"]["skipped_records"] == 1
    assert 0 < m["counts"]["scored"] < 8
    assert any("--salvage skipped 1 damaged record" in f for f in m["run"]["failures"])
    assert f"byte offset {off}" in (out / "report.md").read_text()
    assert evaluate_command(parse("--bag", str(tmp_path / "bag"), "--out", str(out), "--quiet", "--salvage",
                                  "--allow-dropped"), detector_factory=brightness) == 0


# --------------------------------------------------------------------------------------------------
# the node's outputs recorded in a bag
# --------------------------------------------------------------------------------------------------

def _float_image_msg(arr: np.ndarray, stamp_ns: int):
    ts = B.typestore()
    a = np.ascontiguousarray(arr, np.float32)
    return ts.types[B.IMAGE_T](header=B._header(stamp_ns), height=a.shape[0], width=a.shape[1], encoding="32FC1",
                               is_bigendian=0, step=a.shape[1] * 4, data=a.view(np.uint8).reshape(-1))


def write_recorded_bag(path: Path, frames, scores: dict[int, np.ndarray], topic: str) -> None:
    """A bag as `ros2 bag record` of a replay would hold it: images, labels, and the node's scores
    logged a little after their stamp."""
    from rosbags.rosbag2 import Writer

    ts = B.typestore()
    events = []
    for f in frames:
        events.append((f.stamp_ns, B.IMAGE_TOPIC, B.IMAGE_T, B.array_to_image_msg(f.image, f.stamp_ns)))
        events.append((f.stamp_ns, B.LABEL_TOPIC, B.IMAGE_T, B.array_to_image_msg(f.labels, f.stamp_ns)))
    for stamp, arr in scores.items():
        events.append((stamp + 30_000_000, topic, B.IMAGE_T, _float_image_msg(arr, stamp)))
    events.sort(key=lambda e: e[0])
    with Writer(path, version=8) as writer:
        conns = {}
        for t, top, typ, msg in events:
            if top not in conns:
                conns[top] = writer.add_connection(top, typ, typestore=ts)
            writer.write(conns[top], t, ts.serialize_cdr(msg, typ))


def test_recorded_scores_topic(bag_frames, tmp_path):
    topic = "/csl_detector/anomaly_score"
    det = BrightnessDetector(DetectorConfig())
    scores = {f.stamp_ns: det(f.image).anomaly_map for f in bag_frames}
    missing = bag_frames[3].stamp_ns
    del scores[missing]                                  # the node never answered frame 3
    scores[bag_frames[-1].stamp_ns + 10**9] = np.zeros(bag_frames[0].labels.shape, np.float32)  # no image
    write_recorded_bag(tmp_path / "rec", bag_frames, scores, topic)
    out = tmp_path / "eval"
    # A dropped frame fails the run (exit 1, the reason in metrics.json) unless --allow-dropped.
    assert main(["evaluate", "--bag", str(tmp_path / "rec"), "--scores-topic", topic, "--out", str(out),
                 "--quiet"]) == 1
    assert load(out)["counts"]["dropped"] == 1
    assert any("1 labelled frame(s) dropped" in f for f in load(out)["run"]["failures"])
    assert main(["evaluate", "--bag", str(tmp_path / "rec"), "--scores-topic", topic, "--out", str(out),
                 "--quiet", "--allow-dropped"]) == 0
    m = load(out)
    assert m["run"]["failures"] == []
    assert m["run"]["mode"] == "recorded"
    assert m["counts"] == {"images": 6, "labelled": 6, "scored": 5, "dropped": 1, "unlabelled_images": 0,
                           "unmatched_labels": 0, "unmatched_scores": 1}
    kept = [f for f in bag_frames if f.stamp_ns != missing]
    ref = reference_evaluate([(f.frame_id, scores[f.stamp_ns], f.labels) for f in kept], track="obstacle")
    assert m["pixel"]["ap"] == pytest.approx(ref.pixel.ap, abs=1e-12)
    assert any("1 labelled frame(s) were dropped" in n for n in m["notes"])
    # a scores topic the bag does not have is named
    assert main(["evaluate", "--bag", str(tmp_path / "rec"), "--scores-topic", "/other/anomaly_score",
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2


# --------------------------------------------------------------------------------------------------
# the tiny random-weight CSL detector, with sweeps on one network pass
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tiny_model_files):
    return [*tiny_model_files, *TINY]


@pytest.fixture(scope="module")
def tiny_run(synth_bag, tiny_models, tmp_path_factory):
    import torch

    from csl_ros.pipeline import Detector

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_eval")
    counting = Counting(Detector.from_config)
    sets = [a for s in tiny_models + ["score_threshold=0.5", "min_instance_area=20"] for a in ("--set", s)]
    evaluate_command(parse("--bag", str(synth_bag), "--out", str(out), "--quiet", "--video", *sets,
                           "--sweep", "score_threshold=0.3:0.9:0.1", "--sweep", "min_instance_area=0,20,200",
                           "--sweep", "max_obstacle_height_m=0,0.01,100"),
                     detector_factory=counting)
    return out, load(out), counting


@pytest.mark.slow
def test_tiny_detector_metrics_and_report(tiny_run, tiny_models):
    out, m, _ = tiny_run
    assert m["counts"]["scored"] == N_FRAMES and m["counts"]["dropped"] == 0
    assert m["run"]["backend"] == "eager" and m["run"]["device"] == "cpu"
    assert m["config"]["student_path"] == tiny_models[0].split("=", 1)[1]
    assert m["config"]["teacher"] == "msp" and m["config"]["input_width"] == 128
    assert 0.0 <= m["pixel"]["ap"] <= 1.0 and m["pixel"]["n_pos"] > 0
    assert m["components"] is not None and m["components"]["n_gt_components"] >= 1
    stages = m["timing"]["detector_stages_ms"]
    assert {"network", "teacher", "fusion", "total"} <= set(stages) and stages["total"]["n"] == N_FRAMES
    assert (out / "overlay.mp4").stat().st_size > 1000
    html = (out / "report.html").read_text()
    assert "Sweep: score_threshold" in html and "figures/sweep_score_threshold.png" in html
    assert (out / "figures" / "sweep_min_instance_area.png").is_file()


@pytest.mark.slow
def test_sweep_reuses_one_network_pass(tiny_run):
    out, m, counting = tiny_run
    assert counting.built == 1 and counting.calls == N_FRAMES     # no network run per swept value
    by_param = {s["parameter"]: s for s in m["sweeps"]}
    thr = by_param["score_threshold"]
    assert [r["value"] for r in thr["rows"]] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert len(by_param["min_instance_area"]["rows"]) == 3
    # the configured values reproduce the detector's own instances
    at_config = next(r for r in thr["rows"] if r["value"] == 0.5)
    for key in ("instances", "false_instances", "gt_components", "gt_detected"):
        assert at_config[key] == m["instances"][key], key
    area = next(r for r in by_param["min_instance_area"]["rows"] if r["value"] == 20)
    assert area["instances"] == m["instances"]["instances"]
    # pixel recall cannot grow with the threshold; fewer instances survive a larger minimum area
    recalls = [r["pixel_recall"] for r in thr["rows"]]
    assert all(a >= b for a, b in zip(recalls, recalls[1:]))
    sizes = [r["instances"] for r in by_param["min_instance_area"]["rows"]]
    assert sizes[0] >= sizes[1] >= sizes[2]
    # max_obstacle_height_m: 0 (off, the configured value) and 100 m keep the detector's instances; 1 cm
    # (the bag has camera_info, so every instance has a height) drops them all
    heights = {r["value"]: r["instances"] for r in by_param["max_obstacle_height_m"]["rows"]}
    assert heights[0.0] == heights[100.0] == m["instances"]["instances"] > 0
    assert heights[0.01] == 0
    # component metrics at each swept threshold are the official ones with that fixed threshold
    for r in thr["rows"]:
        assert set(r["components"]) >= {"siou_gt", "ppv", "f1_mean"}
    assert "min_instance_area" not in str([r.keys() for r in by_param["min_instance_area"]["rows"]
                                           if "components" in r])


# --------------------------------------------------------------------------------------------------
# --live against the real node (csl_ros.ros.node) over DDS
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def live_node():
    """A csl_detector node (model-free detector) in /csl/camera, as replay_eval.launch.py starts it,
    on a private context and a random ROS domain."""
    pytest.importorskip("rclpy")
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from csl_ros.ros.node import CslDetectorNode

    with private_ros_context(random.randint(1, 200)) as context:
        started = []

        def start(delay_s=0.0, **params):
            detectors = []

            def factory(cfg):
                detectors.append(BrightnessDetector(cfg, delay_s=delay_s))
                return detectors[-1]
            node = CslDetectorNode(detector_factory=factory, namespace="/csl/camera", context=context,
                                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()],
                                   cli_args=["--ros-args", "-r", "image:=/camera/image_raw",
                                             "-r", "camera_info:=/camera/camera_info"])
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            thread = threading.Thread(target=executor.spin, daemon=True)
            thread.start()
            assert node.configure_and_activate()
            started.append((node, executor, thread))
            return node, detectors

        yield start
        for node, executor, thread in started:
            node.release_all()
            executor.shutdown(timeout_sec=5)
            node.destroy_node()
            thread.join(5)


@pytest.mark.ros
@pytest.mark.timeout(180)
def test_live_scores_what_the_node_published(live_node, synth_bag, bag_frames, tmp_path):
    node, detectors = live_node(score_threshold=0.7, min_instance_area=20)
    out = tmp_path / "live"
    assert evaluate_command(parse("--live", "--bag", str(synth_bag), "--out", str(out), "--rate", "max",
                                  "--timeout", "20", "--wait-node", "30", "--quiet")) == 0
    m = load(out)
    from csl_ros.ros.dds import PROFILE_FILE
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == PROFILE_FILE
    c = m["counts"]
    assert c["published"] == N_FRAMES and c["scored"] == N_FRAMES and c["dropped"] == 0
    assert c["unmatched_scores"] == 0
    assert m["run"]["mode"] == "live" and m["run"]["node"] == "/csl/camera/csl_detector"
    assert m["run"]["config_source"] == "node parameters"
    assert m["config"]["score_threshold"] == 0.7 and m["config"]["min_instance_area"] == 20
    assert m["run"]["backend"] == "brightness"
    assert m["timing"]["latency_ms"]["n"] == N_FRAMES
    # the node ran every bag frame once (plus the probe frame); scores equal the in-process run
    assert N_FRAMES + 1 <= detectors[-1].calls <= N_FRAMES + m["run"]["probe_frames"]
    det = BrightnessDetector(node.detector_config)
    ref = reference_evaluate([(f.frame_id, det(f.image).anomaly_map, f.labels) for f in bag_frames])
    assert m["pixel"]["ap"] == pytest.approx(ref.pixel.ap, abs=1e-12)
    assert [r["frame_id"] for r in m["per_frame"]] == [f.frame_id for f in bag_frames]
    # instances came from the node's ~/ood_instances: the counts match the node's own rule
    assert m["instances"].get("note") is None
    assert (out / "report.html").is_file()


@pytest.mark.ros
@pytest.mark.timeout(180)
def test_live_counts_frames_the_node_dropped(live_node, synth_bag, tmp_path):
    node, _ = live_node(delay_s=0.35)        # slower than the bag's 10 Hz: the node skips frames
    out = tmp_path / "live_slow"
    assert evaluate_command(parse("--live", "--bag", str(synth_bag), "--out", str(out), "--rate", "recorded",
                                  "--timeout", "10", "--wait-node", "30", "--quiet", "--allow-dropped")) == 0
    m = load(out)
    c = m["counts"]
    assert c["published"] == N_FRAMES
    assert c["dropped"] >= 1 and c["scored"] >= 1
    assert c["scored"] + c["dropped"] == c["labelled"] == N_FRAMES
    assert int(m["run"]["node_diagnostics"]["frames_dropped"]) >= c["dropped"]
    assert any("dropped" in n for n in m["notes"])


@pytest.mark.ros
@pytest.mark.timeout(60)
def test_live_without_a_node_says_so(synth_bag, tmp_path, monkeypatch, capsys):
    pytest.importorskip("rclpy")
    monkeypatch.setenv("ROS_DOMAIN_ID", str(random.randint(201, 230)))
    assert main(["evaluate", "--live", "--bag", str(synth_bag), "--out", str(tmp_path / "x"), "--wait-node", "1",
                 "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no detector node within 1 s" in err and "/camera/image_raw" in err
