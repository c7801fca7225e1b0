"""Hugging Face teachers and Mask2Former regions against the reference library (tiny random models)."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from csl_ros.teachers.hf import (HASH_RECORD, Mask2FormerRegions, load_hf_segmenter,  # noqa: E402
                                 record_hashes, resolve_hf_dir, verify_hashes)
from csl_ros.teachers.teacher import build_teacher  # noqa: E402


def _image(seed=0, size=(64, 64)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def _batch(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def _reference(directory, cls_name, proc_name, img):
    """The model run as transformers runs it: its own processor's pixel values, its own forward."""
    model = getattr(transformers, cls_name).from_pretrained(str(directory)).eval()
    proc = getattr(transformers, proc_name).from_pretrained(str(directory))
    pixel_values = proc(images=[img], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixel_values), proc


def test_segformer_logits_equal_reference_upsampled(tiny_hf_models):
    img = _image(0)
    out, proc = _reference(tiny_hf_models["segformer"], "SegformerForSemanticSegmentation",
                           "SegformerImageProcessor", img)
    expected = F.interpolate(out.logits, size=img.shape[:2], mode="bilinear", align_corners=False)
    model = load_hf_segmenter(tiny_hf_models["segformer"])
    with torch.no_grad():
        got = model(_batch(img))
    assert got.shape == (1, 5, 64, 64)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    # the argmax is what the processor's post-processing gives
    seg = proc.post_process_semantic_segmentation(out, target_sizes=[img.shape[:2]])[0]
    assert torch.equal(got.argmax(1)[0], seg)
    assert model.class_names == [f"class{i}" for i in range(5)]


def test_mask2former_class_scores_equal_reference_semantic_inference(tiny_hf_models):
    img = _image(1)
    out, _ = _reference(tiny_hf_models["mask2former"], "Mask2FormerForUniversalSegmentation",
                        "Mask2FormerImageProcessor", img)
    # Mask2Former's semantic_inference: upsample mask logits to the input, sigmoid, Σ_q softmax[:K]·mask
    masks = F.interpolate(out.masks_queries_logits, size=(64, 64), mode="bilinear", align_corners=False)
    probs = out.class_queries_logits.softmax(-1)[..., :-1]
    expected = torch.zeros(1, 5, 64, 64)
    for q in range(probs.shape[1]):
        expected += probs[0, q][None, :, None, None] * masks[0, q].sigmoid()[None, None]
    with torch.no_grad():
        got = load_hf_segmenter(tiny_hf_models["mask2former"])(_batch(img))
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["msp", "maxlogit", "entropy", "energy", "rba"])
def test_scores_on_mask2former_class_scores(tiny_hf_models, name):
    img = _image(2)
    teacher = build_teacher(name, segmenter_path=tiny_hf_models["mask2former"], device="cpu",
                            calibration=None if name in ("msp", "entropy", "rba") else "per_image_minmax")
    out = teacher(_batch(img))
    lc = out.logits[0].double().numpy()  # K×H×W, checked against the reference above
    z = lc - lc.max(0, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(0, keepdims=True)
    expected = {"msp": 1 - p.max(0),
                "maxlogit": -lc.max(0),
                "entropy": -(p * np.log(p)).sum(0) / math.log(5),
                "energy": -(np.log(np.exp(z).sum(0)) + lc.max(0)),
                "rba": -np.tanh(lc).sum(0)}[name]
    np.testing.assert_allclose(out.raw_score[0, 0].numpy(), expected, atol=1e-5)
    if name == "rba":
        np.testing.assert_allclose(out.score_map[0, 0].numpy(), np.clip(1 - np.tanh(lc).sum(0), 0, 1),
                                   atol=1e-6)


def test_mask2former_regions_equal_numpy_eq2(tiny_hf_models):
    from csl_ros.model import soft_assign

    img = _image(3)
    model = load_hf_segmenter(tiny_hf_models["mask2former"])
    with torch.no_grad():
        raw = model.network(pixel_values=model.preprocessing(_batch(img))[0])
    r_logits, v = Mask2FormerRegions(model)(_batch(img))
    labels = soft_assign(r_logits[0].sigmoid(), v[0], split_components=False).numpy()
    # independent Eq. 2: A(x) = argmax_n sigmoid(mask_n(x)) · (1 − p_n(no object)), stride 4
    masks = raw.masks_queries_logits[0].numpy().astype(np.float64)
    cls = raw.class_queries_logits[0].numpy().astype(np.float64)
    p = np.exp(cls - cls.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    weighted = (1 / (1 + np.exp(-masks))) * (1 - p[:, -1])[:, None, None]
    assert labels.shape == (16, 16)
    np.testing.assert_array_equal(labels, weighted.argmax(0))


def test_shared_regions_reuse_the_teacher_pass(tiny_hf_models):
    teacher = build_teacher("rba", segmenter_path=tiny_hf_models["mask2former"], device="cpu")
    x = _batch(_image(4))
    teacher(x)
    shared = Mask2FormerRegions(teacher.model, shared=True)
    calls = []
    hook = teacher.model.network.register_forward_hook(lambda *a: calls.append(1))
    r_shared, v_shared = shared(x)
    assert calls == []  # no second forward pass
    hook.remove()
    r_own, v_own = Mask2FormerRegions(teacher.model)(x)
    assert torch.allclose(r_shared, r_own) and torch.allclose(v_shared, v_own)


def test_rba_needs_mask2former(tiny_hf_models):
    with pytest.raises(ValueError, match="needs a Mask2Former"):
        build_teacher("rba", segmenter_path=tiny_hf_models["segformer"], device="cpu")
    with pytest.raises(ValueError, match="needs a Mask2Former teacher_path"):
        build_teacher("rba", device="cpu")


def test_tampered_weight_file_refused_with_its_name(tiny_hf_models, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_hf_models["segformer"], d)
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors: SHA-256 differs"):
        load_hf_segmenter(d)


def test_unverifiable_or_pickled_model_dirs_refused(tiny_hf_models, tmp_path):
    d = tmp_path / "norecord"
    shutil.copytree(tiny_hf_models["segformer"], d)
    (d / HASH_RECORD).unlink()
    with pytest.raises(ValueError, match="no csl_ros.sha256.json.*models import"):
        load_hf_segmenter(d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pytorch_model.bin: pickled weights"):
        record_hashes(d)
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        load_hf_segmenter(d)
    verify_hashes(tiny_hf_models["segformer"])  # the untouched original still verifies


def test_hf_spec_not_in_cache_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*models fetch"):
        resolve_hf_dir("hf:nvidia/segformer-b0-finetuned-cityscapes-1024-1024")
    with pytest.raises(ValueError, match="hf:<owner>/<name>"):
        resolve_hf_dir("hf:no-slash")


@pytest.fixture(scope="module")
def rba_onnx(tiny_hf_models, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from csl_ros.teachers.hf import export_onnx

    path = tmp_path_factory.mktemp("onnx") / "rba.onnx"
    return export_onnx(load_hf_segmenter(tiny_hf_models["mask2former"]), path, (64, 64), output="rba")


def test_onnx_export_rba_equals_native(tiny_hf_models, rba_onnx):
    x = _batch(_image(5))
    native = build_teacher("rba", segmenter_path=tiny_hf_models["mask2former"], device="cpu")(x)
    teacher = build_teacher("onnx", onnx_path=rba_onnx, device="cpu")
    assert teacher.calibration.method == "affine" and teacher.map_range == (-5.0, 0.0)
    onnx = teacher(x)
    assert torch.allclose(onnx.raw_score, native.raw_score, atol=1e-4, rtol=0)
    assert torch.allclose(onnx.score_map, native.score_map, atol=1e-4, rtol=0)
    # the declared RbA mapping is used, not identity (which would turn the map, all <= 0, into zeros)
    assert (onnx.raw_score < 0).all()
    assert torch.allclose(onnx.score_map, (1 + onnx.raw_score).clamp(0, 1), atol=1e-6)
    assert teacher.out_of_range_pixels == 0


class _QueriesAndMap(torch.nn.Module):
    """A Mask2Former-like export: first output N×Q×(K+1) query logits, second a per-pixel map."""

    def forward(self, x):
        queries = x.mean(dim=(2, 3))[:, :1, None].expand(-1, 6, 6) * 1.0
        score = x[:, :1] * 3.0 - 1.0  # ImageNet-normalised input: values well outside [0, 1]
        return queries, score


def _export_toy(path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_QueriesAndMap().eval(), (torch.zeros(1, 3, 32, 32),), str(path),
                          input_names=["images"], output_names=["class_queries_logits", "anomaly"],
                          dynamo=False)
    return path


def test_onnx_bad_outputs_fail_with_clear_errors(tmp_path):
    pytest.importorskip("onnxruntime")
    path = _export_toy(tmp_path / "toy.onnx")
    with pytest.raises(ValueError, match=r"output 'class_queries_logits' has shape \(1, 6, 6\), not a "
                                         r"per-pixel map"):
        build_teacher("onnx", onnx_path=path, device="cpu")
    with pytest.raises(ValueError, match="no output named 'scores'; the model's outputs are "
                                         "class_queries_logits .*anomaly"):
        build_teacher("onnx", onnx_path=path, device="cpu", onnx_output="scores")


def test_onnx_out_of_range_map_is_counted_and_reported(tmp_path, caplog):
    pytest.importorskip("onnxruntime")
    teacher = build_teacher("onnx", onnx_path=_export_toy(tmp_path / "toy.onnx"), device="cpu",
                            onnx_output="anomaly")
    assert teacher.map_range == (0.0, 1.0)  # identity: a map assumed to be in [0, 1]
    x = _batch(_image(6, (32, 32)))
    with caplog.at_level("WARNING", logger="csl_ros.teacher"):
        out = teacher(x)
    raw = out.raw_score
    expected = int(((raw < 0) | (raw > 1)).sum())
    assert expected > 0 and teacher.out_of_range_pixels == expected
    assert teacher.out_of_range_frames == 1
    assert "outside the declared map range [0, 1]" in caplog.text


def _e2e_settings(d):
    return {"scheme": "2", "teacher": "rba", "teacher_path": str(d), "regions": "mask2former",
            "input_height": 64, "input_width": 128, "device": "cpu", "min_instance_area": 0,
            "score_threshold": 0.0, "test_scale": 1.0}


def test_detector_rba_teacher_with_mask2former_regions_one_pass(tiny_hf_models):
    from csl_ros.config import apply_overrides, DetectorConfig
    from csl_ros.model import soft_assign, structure_constrained_fusion
    from csl_ros.pipeline import Detector

    cfg = apply_overrides(DetectorConfig(), _e2e_settings(tiny_hf_models["mask2former"]))
    det = Detector.from_config(cfg)
    assert det.network is None and det.regions.shared  # no CSL student; the teacher's pass is reused
    assert "closed-set Mask2Former, not class-agnostic" in det.regions_description
    calls = []
    det.teacher.model.network.register_forward_hook(lambda *a: calls.append(1))
    img = _image(7, (64, 128))
    out = det(img)
    assert calls == [1]  # one forward pass for teacher and regions
    # Eq. 3 by hand on the same teacher map and the regions Eq. 2 gives on the same queries
    x = _batch(img)
    d = build_teacher("rba", segmenter_path=tiny_hf_models["mask2former"], device="cpu")(x).score_map[0]
    r, v = Mask2FormerRegions(load_hf_segmenter(tiny_hf_models["mask2former"]))(x)
    labels = soft_assign(r[0].sigmoid(), v[0], split_components=True, out_size=(64, 128))
    np.testing.assert_array_equal(out.regions, labels.numpy())
    expected = structure_constrained_fusion(d, labels, "product", cfg.fusion_region_exponent)[0].clamp(0, 1).numpy()
    np.testing.assert_allclose(out.anomaly_map, expected, atol=1e-5)
    # teacher_flip: the mirrored pass runs first, so the shared regions still come from the image's own pass
    det.update(teacher_flip=True)
    calls.clear()
    flipped = det(img)
    assert calls == [1, 1]
    np.testing.assert_array_equal(flipped.regions, labels.numpy())
    t = build_teacher("rba", segmenter_path=tiny_hf_models["mask2former"], device="cpu")
    d2 = 0.5 * (t(x).score_map[0] + t(x.flip(-1)).score_map[0].flip(-1))
    expected = structure_constrained_fusion(d2, labels, "product", cfg.fusion_region_exponent)[0].clamp(0, 1).numpy()
    np.testing.assert_allclose(flipped.anomaly_map, expected, atol=1e-5)


def test_detect_cli_with_hf_teacher_and_mask2former_regions(tiny_hf_models, tmp_path, capsys):
    import cv2

    from csl_ros.cli import main

    cv2.imwrite(str(tmp_path / "road.png"), _image(8, (64, 128)))
    sets = [a for k, v in _e2e_settings(tiny_hf_models["mask2former"]).items() for a in ("--set", f"{k}={v}")]
    assert main(["detect", str(tmp_path / "road.png"), "--out", str(tmp_path / "out"), *sets]) == 0
    printed = capsys.readouterr().out
    assert "teacher rba" in printed and "regions from a closed-set Mask2Former" in printed
    result = json.loads((tmp_path / "out" / "road_obstacles.json").read_text())
    assert result["regions"].startswith("regions from a closed-set Mask2Former, not class-agnostic")
    assert np.load(tmp_path / "out" / "road_anomaly.npy").shape == (64, 128)


def test_mask2former_regions_with_another_teacher(tiny_hf_models):
    from csl_ros.config import DetectorConfig, apply_overrides
    from csl_ros.pipeline import Detector

    settings = dict(_e2e_settings(tiny_hf_models["mask2former"]), teacher="msp",
                    teacher_path=str(tiny_hf_models["segformer"]),
                    regions_path=str(tiny_hf_models["mask2former"]))
    det = Detector.from_config(apply_overrides(DetectorConfig(), settings))
    assert not det.regions.shared and det.teacher.kind == "segformer"
    out = det(_image(9, (64, 128)))
    assert out.regions is not None and out.regions.shape == (64, 128)
    with pytest.raises(ValueError, match="needs regions_path"):
        Detector.from_config(apply_overrides(DetectorConfig(), dict(settings, regions_path="")))


def test_affine_calibration_declared_and_fitted():
    from csl_ros.teachers.calibration import Calibration, fit_calibration
    from csl_ros.teachers.registry import TEACHERS

    RBA_CALIBRATION = Calibration.from_dict(dict(TEACHERS.entry("rba").fixed_calibration))
    s = torch.tensor([-3.0, -2.0, -1.0, -0.25, 0.0, 0.5])
    np.testing.assert_allclose(RBA_CALIBRATION(s).numpy(), [0, 0, 0, 0.75, 1, 1])
    fitted = fit_calibration("affine", {0.01: -2.0, 0.5: -1.5, 0.99: 0.0})
    np.testing.assert_allclose(fitted(torch.tensor([-2.0, -1.0, 0.0])).numpy(), [0, 0.5, 1], atol=1e-7)
    assert Calibration.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(ValueError, match="scale > 0"):
        Calibration("affine", {"scale": 0.0, "offset": 1.0})


@pytest.mark.parametrize("config, expected", [
    ({"feature_extractor_type": "SegformerFeatureExtractor", "size": 1024}, (1024, 1024)),
    ({"image_processor_type": "Mask2FormerImageProcessor", "size": 384, "max_size": 1000,
      "size_divisibility": 32}, (384, 768)),
    ({"image_processor_type": "Mask2FormerImageProcessor", "size": {"shortest_edge": 512,
                                                                    "longest_edge": 800}}, (400, 800)),
    ({"size": {"height": 512, "width": 1024}}, (512, 1024)),
    ({"do_resize": False, "size": 64}, (1024, 2048)),
])
def test_processor_sizes_read_as_transformers_reads_them(tmp_path, config, expected):
    from csl_ros.teachers.hf import Preprocessing

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    pre = Preprocessing.from_file(tmp_path / "preprocessor_config.json")
    assert pre.network_size(1024, 2048) == expected
    if "size_divisibility" in config:
        assert pre.size_divisor == 32


def test_evaluation_report_names_the_regions():
    from csl_ros.eval.report import _regions_line

    line = _regions_line({"scheme": "2", "teacher": "rba", "regions": "mask2former", "teacher_path": "hf:a/b"})
    assert line == "regions from a closed-set Mask2Former, not class-agnostic training (hf:a/b)"
    assert _regions_line({"scheme": "2", "teacher": "sml"}).startswith("regions from the CSL student")
    assert _regions_line({"scheme": "teacher_only"}) == "no regions (teacher only)"


def test_hf_spec_resolved_in_the_local_cache(tiny_hf_models, tmp_path, monkeypatch):
    """teacher_path hf:<repo>[@revision] finds a fetched model in the Hugging Face cache, offline."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "cache" / "models--nvidia--segformer-tiny"
    shutil.copytree(tiny_hf_models["segformer"], repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert resolve_hf_dir("hf:nvidia/segformer-tiny") == repo_dir / "snapshots" / commit
    assert resolve_hf_dir(f"hf:nvidia/segformer-tiny@{commit}") == repo_dir / "snapshots" / commit
    teacher = build_teacher("msp", segmenter_path="hf:nvidia/segformer-tiny", device="cpu")
    assert teacher.kind == "segformer" and teacher(_batch(_image(10))).score_map.shape == (1, 1, 64, 64)
