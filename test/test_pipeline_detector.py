"""The detector on tiny random-weight models: schemes, backends, input handling."""
import dataclasses

import numpy as np
import pytest
import torch

from csl_ros.config import DetectorConfig
from csl_ros.model import build_student, get_preset
from csl_ros.pipeline import Detector
from csl_ros.pipeline.instances import extract_instances
from csl_ros.teachers.calibration import Calibration
from csl_ros.teachers.segmenter import ClosedSetSegmenter, preset
from csl_ros.teachers.teacher import Teacher

SIZE = dict(input_height=64, input_width=128)


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return build_student(get_preset("r18_fast")).eval()


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(1)
    seg = ClosedSetSegmenter(preset("fpn_resnet18"))
    return Teacher("msp", seg, "msp", Calibration("identity"))


def make(scheme, student, teacher, tmp_path, **kw):
    # single scale unless a test asks for test_scale: the checks below compare single-pass maps
    cfg = DetectorConfig(scheme=scheme, device="cpu", backend=kw.pop("backend", "eager"),
                         engine_cache_dir=str(tmp_path), **{**SIZE, "test_scale": 1.0, **kw})
    return Detector(cfg, student=student if scheme != "teacher_only" else None,
                    teacher=teacher if scheme != "1" else None)


@pytest.mark.parametrize("scheme", ["1", "2", "teacher_only"])
def test_schemes_give_input_sized_maps_in_unit_range(scheme, student, teacher, tmp_path):
    det = make(scheme, student, teacher, tmp_path, score_threshold=0.3, min_instance_area=1)
    img = np.random.default_rng(0).integers(0, 255, (90, 170, 3), dtype=np.uint8)  # not a multiple of 32
    out = det(img)
    assert out.anomaly_map.shape == (90, 170) and out.anomaly_map.dtype == np.float32
    assert out.anomaly_map.min() >= 0.0 and out.anomaly_map.max() <= 1.0
    assert out.instances.shape == (90, 170) and out.instances.dtype == np.uint16
    assert len(out.obstacles) == int(out.instances.max())
    assert (out.regions is None) == (scheme == "teacher_only")
    assert {"preprocess", "fusion", "instances", "total"} <= set(out.timings_ms)


@pytest.mark.parametrize("exponent", [1.0, 0.4])
def test_scheme2_fusion_equals_eq3_on_the_detector_regions(exponent, student, teacher, tmp_path):
    """Eq. 3 (region exponent 1) and its softened form m^g * D, by hand on the detector's regions."""
    det = make("2", student, teacher, tmp_path, fusion_region_exponent=exponent)
    only = make("teacher_only", student, teacher, tmp_path)
    img = np.random.default_rng(1).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    fused, raw = det(img), only(img)
    d = raw.anomaly_map.astype(np.float64)
    r = fused.regions
    means = np.bincount(r.ravel(), weights=d.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
    np.testing.assert_allclose(fused.anomaly_map, means[r] ** exponent * d, atol=1e-5)
    assert not np.allclose(means[r] ** exponent, means[r] ** (exponent + 0.5), atol=1e-3)   # the exponent matters here


@pytest.mark.parametrize("split", [False, True])
def test_full_assignment_resolution_is_the_exact_full_resolution_eq2(split, student, teacher, tmp_path):
    """assignment_resolution="full" gives the regions of the exact Eq. 2 path (logits bilinearly
    upsampled to the network input before the argmax, soft_assign_logits(exact=True)), also for a
    letterboxed image (valid part cropped before the component split); the hard baseline at full
    resolution is Mask2Former's thresholds on the upsampled scores."""
    import torch.nn.functional as F

    from csl_ros.model import connected_components, hard_assign, soft_assign_logits

    rng = np.random.default_rng(3)
    for shape in [(64, 128, 3), (40, 128, 3)]:  # exact input size, and letterboxed (valid 40 x 128)
        img = rng.integers(0, 255, shape, dtype=np.uint8)
        with torch.inference_mode():
            out = student(torch.from_numpy(img).permute(2, 0, 1)[None].float() if shape[0] == 64 else
                          make("2", student, teacher, tmp_path)._letterbox([img])[0].float())
        logits, vlogits = out.region_logits[0], out.validity_logits[0]
        exact = soft_assign_logits(logits, vlogits, out_size=(64, 128), split_components=False, exact=True)
        exact = exact[:shape[0]].numpy()
        if split:
            exact = connected_components(exact, 8)[0]
        for assignment in ("soft", "hard"):
            det = make("2", student, teacher, tmp_path, assignment="soft" if assignment == "soft" else "hard",
                       assignment_resolution="full", split_regions=split)
            regions = det(img).regions
            assert regions.shape == shape[:2]
            if assignment == "soft":
                np.testing.assert_array_equal(regions, exact)
            else:
                probs = F.interpolate(logits[None], size=(64, 128), mode="bilinear", align_corners=False)[0]
                want = hard_assign(probs[:, :shape[0]].sigmoid(), vlogits.softmax(-1)[:, 0], split_components=split)
                np.testing.assert_array_equal(regions, want.numpy())
        stride4 = make("2", student, teacher, tmp_path, split_regions=split)(img).regions
        assert stride4.shape == shape[:2]  # the default path stays available and input-sized


def test_assignment_resolution_is_a_checked_choice():
    with pytest.raises(ValueError, match="assignment_resolution"):
        DetectorConfig(assignment_resolution="half").validate()


def test_grey_and_rgba_inputs(student, teacher, tmp_path):
    det = make("2", student, teacher, tmp_path)
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 255, (50, 70), dtype=np.uint8)
    rgba = rng.integers(0, 255, (50, 70, 4), dtype=np.uint8)
    np.testing.assert_array_equal(det(grey).anomaly_map, det(np.dstack([grey] * 3)).anomaly_map)
    np.testing.assert_array_equal(det(rgba).anomaly_map, det(rgba[..., :3].copy()).anomaly_map)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 10, 3), np.uint8), "zero size"),
    (np.zeros((10, 10, 3), np.float32), "must be uint8"),
    (np.zeros((10, 10, 2), np.uint8), "shape"),
    ([[1, 2]], "numpy array"),
])
def test_bad_images_raise_value_error(bad, match, student, teacher, tmp_path):
    det = make("2", student, teacher, tmp_path)
    with pytest.raises(ValueError, match=match):
        det(bad)


def test_tensorrt_missing_falls_back_to_eager_with_reason(student, tmp_path, caplog):
    det = make("1", student, None, tmp_path, backend="tensorrt")
    assert det.backend == "eager"
    assert "tensorrt" in det.network.fallback_reason
    assert any("fell back" in r.message for r in caplog.records)
    assert det(np.zeros((64, 128, 3), np.uint8)).backend == "eager"


def test_torchscript_backend_matches_eager_and_is_cached(student, tmp_path):
    img = np.random.default_rng(3).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    eager = make("1", student, None, tmp_path)(img)
    ts = make("1", student, None, tmp_path, backend="torchscript")
    assert ts.backend == "torchscript"
    assert len(list(tmp_path.glob("torchscript_*.ts"))) == 1
    np.testing.assert_allclose(ts(img).anomaly_map, eager.anomaly_map, atol=1e-4)
    cached = make("1", student, None, tmp_path, backend="torchscript")  # loads the cached trace
    assert cached.backend == "torchscript" and cached.network.fallback_reason is None
    np.testing.assert_allclose(cached(img).anomaly_map, eager.anomaly_map, atol=1e-4)


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime",
                                     pytest.param("compile", marks=pytest.mark.slow)])  # inductor: ~3 min on CPU
def test_every_backend_equals_eager_for_student_and_teacher(backend, student, teacher, tmp_path):
    """Student outputs, teacher logits and the teacher's anomaly map within 1e-3 of eager."""
    img = np.random.default_rng(4).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    eager = make("2", student, teacher, tmp_path)
    det = make("2", student, teacher, tmp_path, backend=backend)
    for net in (det.network, det.teacher_network):
        assert net.backend == backend and net.fallback_reason is None
    x, _ = det._letterbox([img])
    for ours, ref in zip(det.network(x.float()), eager.network(x.float()), strict=True):
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-3, atol=1e-3)
    ours, ref = det.teacher(x, network=det.teacher_network), eager.teacher(x, network=eager.teacher_network)
    np.testing.assert_allclose(ours.logits.numpy(), ref.logits.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ours.score_map.numpy(), ref.score_map.numpy(), atol=1e-3)
    assert f"student {backend}" in det(img).backends and f"teacher {backend}" in det.backends
    teacher_only = make("teacher_only", student, teacher, tmp_path, backend=backend)
    np.testing.assert_allclose(teacher_only(img).anomaly_map, make("teacher_only", student, teacher, tmp_path)(img)
                               .anomaly_map, atol=1e-3)


def test_onnxruntime_cache_is_reused_and_a_corrupt_file_is_exported_again(student, tmp_path, caplog):
    make("1", student, None, tmp_path, backend="onnxruntime")
    (path,) = tmp_path.glob("onnxruntime_*.onnx")
    stamp = path.stat().st_mtime_ns
    assert make("1", student, None, tmp_path, backend="onnxruntime").network.fallback_reason is None
    assert path.stat().st_mtime_ns == stamp  # loaded from the cache, not exported again
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    det = make("1", student, None, tmp_path, backend="onnxruntime")
    assert det.backend == "onnxruntime" and "does not match its recorded SHA-256" in caplog.text
    assert path.stat().st_mtime_ns != stamp


def test_auto_picks_the_measured_fastest_cpu_backend_and_says_so(student, teacher, tmp_path, caplog):
    from csl_ros.pipeline.backends import AUTO_BACKENDS

    caplog.set_level("INFO", logger="csl_ros.detector")
    det = make("2", student, teacher, tmp_path, backend="auto")
    assert det.backend == AUTO_BACKENDS["cpu"][0] == det.teacher_network.backend
    assert f"student {det.network.describe()}, teacher {det.teacher_network.describe()}" == det.backends
    assert det.backends in caplog.text and "backend auto" in caplog.text


def test_batch_equals_single_and_runtime_update(student, teacher, tmp_path):
    det = make("2", student, teacher, tmp_path, score_threshold=0.9, min_instance_area=1)
    rng = np.random.default_rng(4)
    a, b = (rng.integers(0, 255, (64, 128, 3), dtype=np.uint8) for _ in range(2))
    batch = det.detect_batch([a, b])
    np.testing.assert_allclose(batch[1].anomaly_map, det(b).anomaly_map, atol=1e-5)
    before = det(a).instances.max()
    det.update(score_threshold=0.0)
    assert det.config.score_threshold == 0.0 and det(a).instances.max() >= max(before, 1)
    with pytest.raises(ValueError, match="model reload"):
        det.update(input_width=256)
    with pytest.raises(ValueError, match="outside"):
        det.update(score_threshold=2.0)


def test_scheme_requirements_are_checked(student, teacher, tmp_path):
    ca = build_student(dataclasses.replace(get_preset("r18_fast"), distill_channels=0))
    with pytest.raises(ValueError, match="distillation head"):
        make("1", ca, None, tmp_path)
    with pytest.raises(ValueError, match="needs a teacher"):
        Detector(DetectorConfig(scheme="2", device="cpu", **SIZE), student=student, teacher=None)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, student, teacher):
    from csl_ros.model import save_checkpoint
    from csl_ros.teachers.segmenter import save_segmenter

    d = tmp_path_factory.mktemp("models")
    save_checkpoint(d / "student.safetensors", student)
    save_segmenter(teacher.model, d / "seg.safetensors")
    return d


def test_from_config_loads_files_and_names_a_bad_one(model_files, tmp_path):
    from csl_ros.config import apply_overrides

    cfg = apply_overrides(DetectorConfig(), dict(student_path=str(model_files / "student.safetensors"),
                                                 teacher_path=str(model_files / "seg.safetensors"),
                                                 teacher="msp", device="cpu", backend="eager", **SIZE))
    det = Detector.from_config(cfg)
    assert det(np.zeros((30, 40, 3), np.uint8)).anomaly_map.shape == (30, 40)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="broken.safetensors"):
        Detector.from_config(dataclasses.replace(cfg, student_path=str(bad)))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Detector.from_config(dataclasses.replace(cfg, student_path=str(tmp_path / "missing.safetensors")))


def test_detect_cli_writes_all_outputs(model_files, tmp_path):
    import json

    import cv2

    from csl_ros.cli import main

    img = np.random.default_rng(5).integers(0, 255, (48, 80, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), img)
    args = ["detect", str(tmp_path / "frame.png"), "--out", str(tmp_path / "out"), "--fx", "100", "--cy", "20",
            "--set", f"student_path={model_files / 'student.safetensors'}",
            "--set", f"teacher_path={model_files / 'seg.safetensors'}", "--set", "teacher=msp",
            "--set", "device=cpu", "--set", "backend=eager", "--set", "score_threshold=0.0",
            "--set", "input_height=64", "--set", "input_width=128"]
    assert main(args) == 0
    out = tmp_path / "out"
    assert np.load(out / "frame_anomaly.npy").shape == (48, 80)
    inst = cv2.imread(str(out / "frame_instances.png"), cv2.IMREAD_UNCHANGED)
    assert inst.dtype == np.uint16 and inst.shape == (48, 80)
    # colour pictures: the input's rows, then the colour bar below; instances one colour per id
    from csl_ros.visualize import colorize_instances, strip_height
    from test_visualize import assert_colour_bar_below

    score_png = cv2.imread(str(out / "frame_anomaly.png"))
    assert score_png.shape == (48 + strip_height(80), 80, 3)
    assert_colour_bar_below(score_png, 80)
    np.testing.assert_array_equal(cv2.imread(str(out / "frame_instances_color.png")), colorize_instances(inst))
    overlay = cv2.imread(str(out / "frame_overlay.jpg"))
    assert overlay.shape[0] == 48 + strip_height(80) and overlay.shape[1] >= 80
    report = json.loads((out / "frame_obstacles.json").read_text())
    assert report["obstacles"] and report["obstacles"][0]["distance_m"] is not None
    assert main(["detect", str(tmp_path / "nope.png"), "--out", str(out)]) == 2


def test_from_config_takes_the_checkpoints_settings_left_at_the_default(student, tmp_path):
    """A student carrying its input size and tuned threshold (csl_ros.model_settings) brings them,
    unless the user set them."""
    from csl_ros.config import apply_overrides
    from csl_ros.model import save_checkpoint

    path = tmp_path / "student.safetensors"
    save_checkpoint(path, student, metadata={"input_height": 96, "input_width": 160, "score_threshold": 0.4})
    base = DetectorConfig(scheme="1", student_path=str(path), device="cpu", backend="eager",
                          engine_cache_dir=str(tmp_path))
    cfg = Detector.from_config(base).config
    assert (cfg.input_height, cfg.input_width, cfg.score_threshold) == (96, 160, 0.4)
    cfg = Detector.from_config(apply_overrides(base, {"score_threshold": 0.7, "input_height": 64})).config
    assert (cfg.input_height, cfg.input_width, cfg.score_threshold) == (64, 160, 0.7)
    # a threshold per teacher (their fused scores sit on other scales): the configured teacher's entry
    save_checkpoint(path, student, metadata={"score_threshold": 0.4,
                                             "score_threshold_by_teacher": '{"msp": 0.3, "maxlogit": 0.06}'})
    assert Detector.from_config(apply_overrides(base, {"teacher": "maxlogit"})).config.score_threshold == 0.06
    assert Detector.from_config(apply_overrides(base, {"teacher": "msp"})).config.score_threshold == 0.3
    assert Detector.from_config(apply_overrides(base, {"teacher": "entropy"})).config.score_threshold == 0.4


@pytest.mark.parametrize("scheme", ["1", "2", "teacher_only"])
def test_test_scale_is_the_geometric_mean_of_the_two_scales(scheme, student, teacher, tmp_path):
    """test_scale 2: the fused map is sqrt(map at the input size x map at twice it); the regions, and so
    the instances' cut, stay those of the input size."""
    img = np.random.default_rng(3).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    one = make(scheme, student, teacher, tmp_path, backend="torchscript").detect_batch([img])[0]
    big = make(scheme, student, teacher, tmp_path, input_height=128, input_width=256)
    big_out = big.detect_batch([img])[0]
    det = make(scheme, student, teacher, tmp_path, backend="torchscript", test_scale=2.0,
               score_threshold=0.2, min_instance_area=1)
    both = det.detect_batch([img])[0]
    np.testing.assert_allclose(both.anomaly_map, np.sqrt(one.anomaly_map * big_out.anomaly_map), atol=1e-5)
    # the second pass runs on the configured backend, compiled for its own size
    assert sorted(det._networks) == [(64, 128), (128, 256)]
    second = [net for net in det._networks[(128, 256)] if net is not None]
    assert second and all(net.backend == "torchscript" for net in second)
    det.close()   # releases the networks of both sizes
    assert det.network is None and det.teacher_network is None and not det._networks
    if scheme == "teacher_only":
        assert both.regions is None
    else:
        np.testing.assert_array_equal(both.regions, one.regions)
    assert any(k.endswith("x2") for k in both.timings_ms)
    np.testing.assert_array_equal(both.instances, extract_instances(
        both.anomaly_map, both.regions, 0.2, 1, min_split_fraction=det.config.min_split_fraction))


def test_max_obstacle_height_applies_with_the_frame_camera(student, teacher, tmp_path):
    """The detector drops instances taller than max_obstacle_height_m at their contact point's distance,
    using the camera passed with the frame; without a camera nothing is dropped."""
    from csl_ros.pipeline.geometry import CameraGeometry

    cam = CameraGeometry(fx=100.0, fy=100.0, cx=64.0, cy=10.0, height_m=1.5, pitch_deg=0.0)
    img = np.random.default_rng(3).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    det = make("teacher_only", student, teacher, tmp_path, score_threshold=0.05, min_instance_area=1)
    base = det.detect_batch([img], [cam])[0]
    heights = [o.height_m for o in base.obstacles]
    assert heights and None not in heights, "the camera gives every instance a metric height"
    det.update(max_obstacle_height_m=max(heights) + 0.01)
    assert len(det.detect_batch([img], [cam])[0].obstacles) == len(base.obstacles)
    det.update(max_obstacle_height_m=min(heights) - 0.01)
    cut = det.detect_batch([img], [cam])[0]
    assert cut.obstacles == [] and cut.instances.max() == 0
    assert len(det.detect_batch([img])[0].obstacles) == len(base.obstacles)   # no camera: no metric height


def test_road_roi_comes_with_the_detection_and_keeps_only_instances_touching_it(student, teacher, tmp_path):
    class LowerHalfRoad:   # the teacher's scores, with "road" (trainId 0) predicted on the lower half only
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):   # model, score name, ...: the wrapped teacher's
            return getattr(self.inner, name)

        def __call__(self, x, network=None):
            out = self.inner(x, network=network)
            seg = torch.ones_like(out.segmentation)
            seg[:, seg.shape[1] // 2:] = 0
            return dataclasses.replace(out, segmentation=seg)

    img = np.random.default_rng(5).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    scores = make("2", student, teacher, tmp_path)(img).anomaly_map
    thr = float(np.quantile(scores, 0.8))   # scattered instances, above and below the road's edge
    off = make("2", student, teacher, tmp_path, score_threshold=thr, min_instance_area=1)
    on = make("2", student, teacher, tmp_path, score_threshold=thr, min_instance_area=1, road_roi=True)
    on.teacher = LowerHalfRoad(on.teacher)
    a, b = off(img), on(img)
    assert a.road_roi is None
    assert b.road_roi.shape == (64, 128) and b.road_roi.dtype == bool
    assert b.road_roi[32:].all() and not b.road_roi[:28].any()   # the road, grown by a few pixels
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    touching = [i for i in range(1, int(a.instances.max()) + 1) if b.road_roi[a.instances == i].any()]
    assert 0 < len(touching) < int(a.instances.max())   # the case has instances on both sides
    assert int(b.instances.max()) == len(touching)
    assert all(b.road_roi[b.instances == i].any() for i in range(1, int(b.instances.max()) + 1))

    # the map road_roi reads, at the image size, from the letterboxed input: a 64x96 image fills 64x96 of
    # the 64x128 input; its lower half is road
    classes = on.teacher_classes(img[:, :96])
    assert classes.shape == (64, 96) and classes.dtype == np.uint8
    assert (classes[32:] == 0).all() and (classes[:32] == 1).all()
    assert make("1", student, teacher, tmp_path).teacher_classes(img) is None   # scheme 1 runs no teacher


def test_scale_fusion_combines_the_two_passes(student, teacher, tmp_path):
    """test_scale 2: the map is the two passes' fused maps combined by scale_fusion (geometric mean,
    mean or max); on the detector, mean and max give both passes, and the geometric mean is theirs."""
    from csl_ros.config import apply_overrides
    from csl_ros.pipeline.detector import combine_scales

    a, b = torch.tensor([0.0, 0.25, 0.81, 1.0]), torch.tensor([0.64, 0.25, 0.01, 1.0])
    assert torch.allclose(combine_scales(a, b, "geometric"), torch.tensor([0.0, 0.25, 0.09, 1.0]))
    assert torch.allclose(combine_scales(a, b, "mean"), torch.tensor([0.32, 0.25, 0.41, 1.0]))
    assert torch.allclose(combine_scales(a, b, "max"), torch.tensor([0.64, 0.25, 0.81, 1.0]))
    with pytest.raises(ValueError, match="scale_fusion 'sum'"):
        combine_scales(a, b, "sum")
    with pytest.raises(ValueError, match="scale_fusion"):
        apply_overrides(DetectorConfig(), {"scale_fusion": "sum"})
    img = np.random.default_rng(5).integers(0, 255, (64, 128, 3), dtype=np.uint8)
    det = make("2", student, teacher, tmp_path, test_scale=2.0)
    maps = {}
    for mode in ("geometric", "mean", "max"):
        det.config = dataclasses.replace(det.config, scale_fusion=mode)
        maps[mode] = det(img).anomaly_map.astype(np.float64)
    g, m, x = maps["geometric"], maps["mean"], maps["max"]
    assert not np.allclose(g, x, atol=1e-3)          # the two passes differ on this image
    other = 2 * m - x                                # mean = (a + b) / 2 and max = max(a, b) give both
    assert (other <= x + 1e-6).all()
    np.testing.assert_allclose(g, np.sqrt(x * np.clip(other, 0, None)), atol=1e-4)


def test_teacher_flip_averages_the_mirrored_pass(student, teacher, tmp_path):
    """teacher_flip: the teacher's map is the mean of the image's and the mirrored image's (mirrored back);
    scheme 2 fuses that map with the image's own regions."""
    img = np.random.default_rng(6).integers(0, 255, (64, 128, 3), dtype=np.uint8)   # fills the input
    plain = make("teacher_only", student, teacher, tmp_path)
    a = plain(img).anomaly_map.astype(np.float64)
    b = plain(np.ascontiguousarray(img[:, ::-1])).anomaly_map[:, ::-1].astype(np.float64)
    assert not np.allclose(a, b, atol=1e-3)          # the teacher is not mirror-symmetric on this image
    flipped = make("teacher_only", student, teacher, tmp_path, teacher_flip=True)(img)
    np.testing.assert_allclose(flipped.anomaly_map, 0.5 * (a + b), atol=1e-5)
    # scheme 2: the same regions as without the flip, and Eq. 3 on the averaged map
    off, on = make("2", student, teacher, tmp_path)(img), make("2", student, teacher, tmp_path, teacher_flip=True)(img)
    np.testing.assert_array_equal(off.regions, on.regions)
    assert not np.allclose(off.anomaly_map, on.anomaly_map, atol=1e-4)
    # a letterboxed image (padding on the right; on the left once mirrored) keeps its size and range
    part = make("teacher_only", student, teacher, tmp_path, teacher_flip=True)(img[:, :96])
    assert part.anomaly_map.shape == (64, 96) and 0.0 <= part.anomaly_map.min() <= part.anomaly_map.max() <= 1.0
