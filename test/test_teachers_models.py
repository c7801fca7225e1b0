"""Teachers: segmenter presets and checkpoints, ONNX round trip, build_teacher."""
import warnings

import pytest
import torch
from torch import nn

from csl_ros.config import TEACHERS
from csl_ros.model.integrity import weights_sha256
from csl_ros.teachers.onnx_runner import OnnxModel, set_onnx_metadata
from csl_ros.teachers.scores import SCORE_FUNCTIONS, compute_score
from csl_ros.teachers.segmenter import (IMAGENET_MEAN, IMAGENET_STD, ClosedSetSegmenter,
                                        PRESETS, SegmenterConfig, load_segmenter, preset,
                                        save_segmenter, to_unit_float)
from csl_ros.teachers.stats import StatsAccumulator, default_stats_path, file_sha256
from csl_ros.teachers.teacher import TEACHER_NAMES, Teacher, build_teacher

torch.set_num_threads(2)


def _images(b=2, h=64, w=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.fixture(scope="module")
def small_segmenter():
    torch.manual_seed(0)
    return ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large")).eval()


def _fit_stats(model, path_for_sha=None, n=2):
    acc = None
    with torch.no_grad():
        for i in range(n):
            z = model(_images(seed=10 + i))
            acc = acc or StatsAccumulator(z.shape[1], reservoir_size=5000, seed=0)
            acc.update_logits(z)
    return acc.finalize(segmenter_sha256=file_sha256(path_for_sha) if path_for_sha else None,
                        data="random", frames=n)


# ---- segmenter ----------------------------------------------------------------------------------
def test_teacher_names_match_config():
    assert set(TEACHER_NAMES) == set(TEACHERS) - {"none"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if "101" in n else n
                                  for n in sorted(PRESETS)])
def test_presets_build_and_forward_at_64x128(name):
    torch.manual_seed(0)
    model = ClosedSetSegmenter(PRESETS[name]).eval()
    with torch.no_grad():
        out = model(_images(1))
    assert out.shape == (1, 19, 64, 128) and torch.isfinite(out).all()


def test_uint8_and_unit_float_inputs_agree_and_bad_input_is_refused(small_segmenter):
    img = _images(1)
    with torch.no_grad():
        a = small_segmenter(img)
        b = small_segmenter(img.float() / 255)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        small_segmenter(img.float())
    with pytest.raises(ValueError, match="B×3×H×W"):
        to_unit_float(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="unknown segmenter architecture"):
        SegmenterConfig(arch="unet")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip_keeps_outputs(small_segmenter, tmp_path, suffix):
    path = save_segmenter(small_segmenter, tmp_path / f"seg{suffix}")
    loaded = load_segmenter(path)
    assert loaded.config == small_segmenter.config and not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images(1)), small_segmenter(_images(1)))


def test_fp16_checkpoint_loads_as_float32(small_segmenter, tmp_path):
    path = save_segmenter(small_segmenter, tmp_path / "half.safetensors", dtype=torch.float16)
    loaded = load_segmenter(path)
    assert next(loaded.parameters()).dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images(1)), small_segmenter(_images(1)), atol=0.1, rtol=0.05)


def test_tampered_checkpoint_is_refused_with_its_name(small_segmenter, tmp_path):
    path = save_segmenter(small_segmenter, tmp_path / "teacher_seg.safetensors")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="teacher_seg.safetensors.*SHA-256"):
        load_segmenter(path)
    path.write_bytes(bytes(data[:50]))  # truncated: unreadable header
    with pytest.raises(ValueError, match="teacher_seg.safetensors"):
        load_segmenter(path)


def test_mismatched_checkpoints_are_refused_with_the_file_name(small_segmenter, tmp_path):
    # a plain state dict of another architecture, loaded as lraspp
    torch.manual_seed(0)
    other = ClosedSetSegmenter(preset("fpn_resnet18"))
    raw = tmp_path / "user_fpn.pth"
    torch.save(other.net.state_dict(), raw)
    assert load_segmenter(raw).config.arch == "fpn_resnet18"  # recognised from its keys
    with pytest.raises(ValueError, match="user_fpn.pth.*does not fit lraspp"):
        load_segmenter(raw, preset_name="lraspp_mobilenet_v3_large")
    # stored config disagreeing with the requested preset / expected class count
    path = save_segmenter(small_segmenter, tmp_path / "mine.safetensors")
    with pytest.raises(ValueError, match="mine.safetensors.*differs"):
        load_segmenter(path, preset_name="deeplabv3_resnet50")
    with pytest.raises(ValueError, match="mine.safetensors.*19 classes, expected 10"):
        load_segmenter(path, expected_num_classes=10)
    # wrong shapes: a 10-class head stored under a 19-class config
    sd = {k: v.clone() for k, v in small_segmenter.net.state_dict().items()}
    ten = ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large", num_classes=10))
    torch.save({"format": "csl_ros.segmenter", "config": small_segmenter.config.to_dict(),
                "state_dict": ten.net.state_dict(), "weights_sha256": weights_sha256(ten.net.state_dict())},
               tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match="shapes.pt.*shapes do not fit"):
        load_segmenter(tmp_path / "shapes.pt")
    # a pickle that is not weights-only is refused
    torch.save({"model": sd, "args": object.__new__(_Args)}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match="pickled.pth.*never unpickles"):
        load_segmenter(tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_segmenter(tmp_path / "nothere.pt")
    # our own file without its embedded hash cannot be verified: refused
    torch.save({"format": "csl_ros.segmenter", "config": small_segmenter.config.to_dict(), "state_dict": sd},
               tmp_path / "nohash.pt")
    with pytest.raises(ValueError, match="nohash.pt: segmenter checkpoint without an embedded weights_sha256"):
        load_segmenter(tmp_path / "nohash.pt")


class _Args:  # stands in for argparse.Namespace in a torchvision reference checkpoint
    pass


def test_torchvision_reference_checkpoint_with_aux_head_loads(tmp_path):
    torch.manual_seed(0)
    cfg = SegmenterConfig(arch="deeplabv3_mobilenet_v3_large", aux_loss=True)
    model = ClosedSetSegmenter(cfg)
    path = tmp_path / "model_best.pth"
    torch.save({"model": model.net.state_dict(), "epoch": 3}, path)  # the reference scripts' layout
    loaded = load_segmenter(path)
    assert loaded.config.arch == "deeplabv3_mobilenet_v3_large" and loaded.config.aux_loss


# ---- build_teacher --------------------------------------------------------------------------------
def test_build_teacher_all_logit_teachers(small_segmenter, tmp_path):
    seg_path = save_segmenter(small_segmenter, tmp_path / "seg.safetensors")
    stats = _fit_stats(small_segmenter, seg_path)
    stats.save(default_stats_path(seg_path))  # found beside the checkpoint
    img = _images(2)
    for name in ("msp", "maxlogit", "sml", "entropy", "energy"):
        teacher = build_teacher(name, seg_path, device="cpu")
        out = teacher(img)
        assert out.score_map.shape == out.raw_score.shape == (2, 1, 64, 128)
        assert float(out.score_map.min()) >= 0 and float(out.score_map.max()) <= 1
        assert out.logits.shape == (2, 19, 64, 128) and out.segmentation.shape == (2, 64, 128)
        torch.testing.assert_close(out.segmentation, out.logits.argmax(1))
        torch.testing.assert_close(out.raw_score, compute_score(name, out.logits, stats))
        # global: the map is the stored calibration of each pixel's raw score, whatever the batch
        torch.testing.assert_close(teacher.calibration(out.raw_score[1:]), out.score_map[1:])
        alone = teacher(img[1:])  # same up to the network's batch-size float noise
        torch.testing.assert_close(alone.score_map[0], out.score_map[1], atol=2e-3, rtol=0)
    assert build_teacher("sml", seg_path, device="cpu").calibration.method == "logistic"
    ablation = build_teacher("sml", seg_path, device="cpu", calibration="per_image_minmax")
    assert not ablation.is_global


def test_build_teacher_refuses_bad_requests(small_segmenter, tmp_path):
    seg_path = save_segmenter(small_segmenter, tmp_path / "seg.safetensors")
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("obsnet", seg_path)
    with pytest.raises(ValueError, match="'none'"):
        build_teacher("none", seg_path)
    with pytest.raises(ValueError, match="calibration fitted on in-distribution"):
        build_teacher("maxlogit", seg_path, device="cpu")  # no statistics beside it
    assert build_teacher("msp", seg_path, device="cpu").calibration.method == "identity"
    # statistics fitted for another model file are refused
    other = tmp_path / "other.safetensors"
    torch.manual_seed(1)
    save_segmenter(ClosedSetSegmenter(preset("lraspp_mobilenet_v3_large")), other)
    stats_path = tmp_path / "s.stats.json"
    _fit_stats(small_segmenter, other, n=1).save(stats_path)
    with pytest.raises(ValueError, match="s.stats.json was fitted for another model"):
        build_teacher("sml", seg_path, stats_path=stats_path, device="cpu")
    with pytest.raises(ValueError, match="unbounded"):
        build_teacher("energy", seg_path, stats_path=stats_path, device="cpu", calibration="identity",
                      verify_stats=False)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        build_teacher("sml", seg_path, stats_path=tmp_path / "missing.json", device="cpu")


# ---- ONNX -----------------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """Takes ImageNet-normalised float input, outputs K-channel logits at half resolution."""

    def __init__(self, k):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, k, 3, padding=1,
                                                                                     stride=2))

    def forward(self, x):
        return self.body(x) * 3.0


class Normalised(nn.Module):
    """The torch path: uint8 images → ImageNet normalisation → net → logits at input size."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        x = to_unit_float(images)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        y = self.net((x - mean) / std)
        return nn.functional.interpolate(y, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _export(net, path, h=32, w=48, dynamic=True):
    x = torch.randn(1, 3, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), str(path), input_names=["images"], output_names=["out"],
                          dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}} if dynamic else None,
                          dynamo=False)


def test_onnx_logits_teacher_matches_torch_path(tmp_path):
    torch.manual_seed(0)
    net = TinyNet(5).eval()
    onnx_path = tmp_path / "ext.onnx"
    _export(net, onnx_path)
    torch_model = Normalised(net).eval()
    stats = _fit_stats(torch_model, onnx_path)
    stats.save(default_stats_path(onnx_path))
    img = _images(2, 40, 56, seed=5)
    for fn in SCORE_FUNCTIONS:
        teacher = build_teacher("onnx", onnx_path=onnx_path, device="cpu", onnx_score=fn)
        ref = Teacher("torch", torch_model, fn, stats.calibration_for(fn), stats)(img)
        out = teacher(img)
        torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.raw_score, ref.raw_score, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.score_map, ref.score_map, atol=1e-5, rtol=1e-5)
    # the score function may come from the model's metadata instead
    with pytest.raises(ValueError, match="choose the score function"):
        build_teacher("onnx", onnx_path=onnx_path, device="cpu")
    set_onnx_metadata(onnx_path, score_function="entropy")
    stats.segmenter_sha256 = file_sha256(onnx_path)
    stats.save(default_stats_path(onnx_path))
    assert build_teacher("onnx", onnx_path=onnx_path, device="cpu").score_fn == "entropy"


class MapNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


def test_onnx_anomaly_map_teacher_and_fixed_input_size(tmp_path):
    torch.manual_seed(0)
    net = MapNet().eval()
    path = tmp_path / "map.onnx"
    _export(net, path)
    teacher = build_teacher("onnx", onnx_path=path, device="cpu")
    assert teacher.score_fn == "map" and teacher.calibration.method == "identity"
    img = _images(1, 40, 56)
    out = teacher(img)
    ref = Normalised(net)(img)
    torch.testing.assert_close(out.score_map, ref, atol=1e-5, rtol=1e-5)
    assert out.logits is None and out.segmentation is None
    # a fixed-size model gets the image resized and its output resized back
    fixed = tmp_path / "fixed.onnx"
    _export(net, fixed, 32, 48, dynamic=False)
    model = OnnxModel(fixed)
    assert model.fixed_size == (32, 48)
    assert build_teacher("onnx", onnx_path=fixed, device="cpu")(img).score_map.shape == (1, 1, 40, 56)
    with pytest.raises(ValueError, match="anomaly map"):
        build_teacher("onnx", onnx_path=path, device="cpu", onnx_score="sml")
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        build_teacher("onnx", onnx_path=tmp_path / "absent.onnx", device="cpu")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx"):
        build_teacher("onnx", onnx_path=tmp_path / "junk.onnx", device="cpu")
