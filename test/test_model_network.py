"""The student network: presets and shapes, padding, decoder mechanics, heads, backbone weight files."""
import pickle

import numpy as np
import pytest
import torch
import torchvision

from csl_ros.model import (PRESETS, CSLStudent, ModelConfig, ResNetTrunk, build_student,
                           detectron2_to_torchvision_keys, get_preset, load_backbone_weights,
                           optimizer_param_groups, upsample_to_input)
from csl_ros.model.transformer_decoder import CrossAttentionLayer, MaskedTransformerDecoder, PositionEmbeddingSine


@pytest.fixture(scope="module")
def r18():
    torch.manual_seed(0)
    return build_student("r18_fast").eval()


def _check_shapes(model, out, h, w):
    cfg = model.config
    hq, wq = -(-h // 4), -(-w // 4)
    assert out.region_logits.shape == (1, cfg.num_queries, hq, wq)
    assert out.validity_logits.shape == (1, cfg.num_queries, 2)
    assert out.distribution.shape == (1, cfg.distill_channels, hq, wq)
    assert out.aux_region_logits == () and out.aux_validity_logits == ()
    assert all(torch.isfinite(t).all() for t in out[:3])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_at_a_non_multiple_of_32_size(preset):
    torch.manual_seed(0)
    model = build_student(preset).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 203, 330) * 255)
    _check_shapes(model, out, 203, 330)


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_at_512x1024(preset):
    model = build_student(preset).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 512, 1024) * 255)
    _check_shapes(model, out, 512, 1024)


def test_presets_are_what_they_say():
    paper = get_preset("r50_paper")
    assert (paper.backbone, paper.num_queries, paper.dec_layers, paper.hidden_dim, paper.dim_feedforward,
            paper.nheads, paper.conv_dim, paper.mask_dim, paper.distill_channels) == \
        ("resnet50", 100, 9, 256, 2048, 8, 256, 256, 1)
    assert get_preset("r101").backbone == "resnet101"
    fast = get_preset("r18_fast")
    assert (fast.backbone, fast.num_queries, fast.dec_layers, fast.hidden_dim) == ("resnet18", 50, 6, 128)
    assert get_preset("r18_fast", distill_channels=0).distill_channels == 0
    with pytest.raises(ValueError, match="unknown model preset"):
        get_preset("r34_fast")
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        get_preset("r18_fast", queries=3)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(hidden_dim=250)
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vit")
    assert ModelConfig.from_json(fast.to_json()) == fast
    lite = get_preset("r18_lite")
    assert (lite.backbone, lite.backbone_width, lite.hidden_dim, lite.nheads) == ("resnet18", 0.5, 96, 3)
    assert ModelConfig.from_json(lite.to_json()) == lite
    with pytest.raises(ValueError, match="backbone_width"):
        ModelConfig(backbone_width=0)


def test_narrow_trunk_has_the_resnet_layout_at_scaled_widths():
    from csl_ros.model.backbone import ResNetTrunk

    full, half = ResNetTrunk("resnet18"), ResNetTrunk("resnet18", width=0.5)
    assert half.out_channels == (32, 64, 128, 256)
    # the same parameter names (torchvision layout), each conv with half the channels
    assert list(full.state_dict()) == list(half.state_dict())
    assert half.layer3[0].conv1.weight.shape == (128, 64, 3, 3)
    n_full = sum(p.numel() for p in full.parameters())
    n_half = sum(p.numel() for p in half.parameters())
    assert 0.2 < n_half / n_full < 0.3  # ~width^2
    deep = ResNetTrunk("resnet50", width=0.25)
    assert deep.out_channels == (64, 128, 256, 512)  # bottleneck expansion 4 of 16, 32, 64, 128
    with torch.no_grad():
        res = half(torch.rand(1, 3, 64, 96))
    assert [tuple(r.shape[1:]) for r in res] == [(32, 16, 24), (64, 8, 12), (128, 4, 6), (256, 2, 3)]


def test_padding_equals_running_on_a_mean_coloured_canvas(r18):
    torch.manual_seed(1)
    image = torch.rand(1, 3, 70, 101) * 255
    canvas = torch.tensor(r18.config.pixel_mean).view(1, 3, 1, 1).repeat(1, 1, 96, 128)
    canvas[..., :70, :101] = image
    with torch.no_grad():
        out, ref = r18(image), r18(canvas)
    assert out.region_logits.shape[-2:] == (18, 26)
    assert torch.allclose(out.region_logits, ref.region_logits[..., :18, :26], atol=1e-4)
    assert torch.allclose(out.validity_logits, ref.validity_logits, atol=1e-4)
    up = upsample_to_input(out.region_logits[0], (70, 101))
    assert up.shape == (r18.config.num_queries, 70, 101)
    with pytest.raises(ValueError, match="cannot cover"):
        upsample_to_input(out.region_logits[0], (80, 101))


def test_uint8_input_and_bad_input(r18):
    image = (torch.rand(1, 3, 64, 64) * 255).round()
    with torch.no_grad():
        a, b = r18(image), r18(image.to(torch.uint8))
    assert torch.allclose(a.region_logits, b.region_logits)
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        r18(torch.rand(3, 64, 64))


def test_training_mode_returns_all_deep_supervision_predictions():
    torch.manual_seed(2)
    model = build_student("r18_fast").train()
    out = model(torch.rand(2, 3, 64, 96) * 255)
    assert len(out.aux_region_logits) == len(out.aux_validity_logits) == model.config.dec_layers
    assert all(r.shape == out.region_logits.shape for r in out.aux_region_logits)
    # The final prediction is the last layer's, distinct from the auxiliaries.
    assert not torch.allclose(out.aux_region_logits[-1], out.region_logits)


def test_decoder_layers_cycle_over_the_three_scales(r18):
    seen = []
    hooks = [layer.register_forward_hook(lambda mod, args, out: seen.append(args[1].shape[1]))
             for layer in r18.transformer_decoder.cross_layers]
    with torch.no_grad():
        r18(torch.rand(1, 3, 128, 256) * 255)
    for hook in hooks:
        hook.remove()
    sizes = [4 * 8, 8 * 16, 16 * 32]  # 1/32, 1/16, 1/8 of 128 x 256
    assert seen == [sizes[i % 3] for i in range(r18.config.dec_layers)]


def test_attention_mask_thresholds_and_unmasks_empty_rows():
    logits = torch.tensor([[[[1.0, -1.0], [-2.0, 3.0]], [[-1.0, -1.0], [-1.0, -1.0]]]])  # B=1, N=2, 2x2
    mask = MaskedTransformerDecoder.attention_mask(logits, (2, 2))
    assert mask.tolist() == [[[False, True, True, False], [False, False, False, False]]]


def test_masked_cross_attention_ignores_masked_pixels():
    torch.manual_seed(3)
    layer = CrossAttentionLayer(16, 4).eval()
    tgt, qpos = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
    memory, pos = torch.randn(1, 10, 16), torch.randn(1, 10, 16)
    mask = torch.zeros(1, 3, 10, dtype=torch.bool)
    mask[0, 0, 5:] = True                      # query 0 may not look at pixels 5..9
    out = layer(tgt, memory, mask, pos, qpos)
    changed = memory.clone()
    changed[0, 5:] += 10.0
    out2 = layer(tgt, changed, mask, pos, qpos)
    assert torch.allclose(out[0, 0], out2[0, 0], atol=1e-6)
    assert not torch.allclose(out[0, 1], out2[0, 1], atol=1e-3)


def test_sine_position_encoding_values():
    pe = PositionEmbeddingSine(4)(torch.zeros(1, 8, 3, 5))
    assert pe.shape == (1, 8, 3, 5)
    two_pi = 2 * np.pi
    # y channels [sin(y), cos(y), sin(y/100), cos(y/100)] (dim_t = 10000^(2 floor(k/2)/4)), then x.
    for i in range(3):
        for j in range(5):
            y, x = (i + 1) / (3 + 1e-6) * two_pi, (j + 1) / (5 + 1e-6) * two_pi
            assert pe[0, 0, i, j].item() == pytest.approx(np.sin(y), abs=1e-5)
            assert pe[0, 1, i, j].item() == pytest.approx(np.cos(y), abs=1e-5)
            assert pe[0, 4, i, j].item() == pytest.approx(np.sin(x), abs=1e-5)
            assert pe[0, 6, i, j].item() == pytest.approx(np.sin(x / 100), abs=1e-5)


def test_distillation_head_variants():
    torch.manual_seed(4)
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        multi = build_student(get_preset("r18_fast", distill_channels=3)).eval()(x).distribution
        none = build_student(get_preset("r18_fast", distill_channels=0)).eval()(x).distribution
    assert multi.shape == (1, 3, 16, 16) and torch.allclose(multi.sum(1), torch.ones(1, 16, 16), atol=1e-5)
    assert none.shape == (1, 0, 16, 16)
    # detach_embeddings: the distillation output sends no gradient into the trunk.
    model = build_student(get_preset("r18_fast", detach_embeddings=True)).train()
    model(x).distribution.sum().backward()
    assert model.backbone.conv1.weight.grad is None
    assert model.distill_head.predict.weight.grad is not None


def test_optimizer_param_groups_follow_the_recipe(r18):
    groups = optimizer_param_groups(r18, lr=1e-4, weight_decay=0.05)
    seen = [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in r18.parameters()) and len(seen) == len(set(seen))
    lookup = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert lookup[id(r18.backbone.conv1.weight)] == (pytest.approx(1e-5), 0.05)
    assert lookup[id(r18.backbone.bn1.weight)] == (pytest.approx(1e-5), 0.0)
    assert lookup[id(r18.transformer_decoder.query_feat.weight)] == (1e-4, 0.0)
    assert lookup[id(r18.transformer_decoder.decoder_norm.weight)] == (1e-4, 0.0)
    assert lookup[id(r18.pixel_decoder.mask_features.weight)] == (1e-4, 0.05)


# --- backbone weight files -----------------------------------------------------------------------

def _to_detectron2(tv_state):
    """Independent forward renaming torchvision -> detectron2 (the layout of Mask2Former's R-50.pkl)."""
    out = {}
    for key, value in tv_state.items():
        parts = key.split(".")
        if parts[0] == "fc":
            continue
        if parts[0] == "conv1":
            out["stem.conv1." + parts[1]] = value
        elif parts[0] == "bn1":
            out["stem.conv1.norm." + parts[1]] = value
        else:
            stage = "res" + str(int(parts[0][-1]) + 1)
            block, name, rest = parts[1], parts[2], parts[3:]
            if name == "downsample":
                conv = "shortcut" if rest[0] == "0" else "shortcut.norm"
                out[f"{stage}.{block}.{conv}.{rest[1]}"] = value
            elif name.startswith("bn"):
                out[f"{stage}.{block}.conv{name[2:]}.norm.{rest[0]}"] = value
            else:
                out[f"{stage}.{block}.{name}.{rest[0]}"] = value
    return out


@pytest.mark.parametrize("depth", ["resnet18", "resnet50"])
def test_detectron2_key_mapping_round_trip(depth):
    tv = getattr(torchvision.models, depth)(weights=None).state_dict()
    d2 = _to_detectron2(tv)
    assert "res2.0.conv1.norm.weight" in d2 and "stem.conv1.weight" in d2
    if depth == "resnet50":
        assert "res2.0.shortcut.weight" in d2 and "res5.2.conv3.norm.running_var" in d2
    mapped = detectron2_to_torchvision_keys({("backbone.bottom_up." + k): v for k, v in d2.items()})
    expected = {k: v for k, v in tv.items() if not k.startswith("fc.")}
    assert set(mapped) == set(expected)
    assert all(mapped[k] is expected[k] for k in expected)


def test_load_backbone_weights_from_torchvision_and_detectron2_files(tmp_path):
    torch.manual_seed(5)
    source = torchvision.models.resnet18(weights=None)
    for p in source.parameters():
        p.data.normal_()
    tv_path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), tv_path)
    d2_path = tmp_path / "R-18.pkl"
    with open(d2_path, "wb") as fh:
        pickle.dump({"model": {k: v.numpy() for k, v in _to_detectron2(source.state_dict()).items()},
                     "__author__": "test"}, fh)
    for path in (tv_path, d2_path):
        trunk = ResNetTrunk("resnet18")
        load_backbone_weights(trunk, path)
        assert torch.equal(trunk.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
        assert torch.equal(trunk.layer2[0].downsample[1].running_var, source.layer2[0].downsample[1].running_var)
    model = build_student("r18_fast", backbone_weights=tv_path)
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match="resnet50"):       # an R-18 file for an R-50 trunk
        load_backbone_weights(ResNetTrunk("resnet50"), tv_path)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(tv_path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken.pth"):
        load_backbone_weights(ResNetTrunk("resnet18"), broken)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_backbone_weights(ResNetTrunk("resnet18"), tmp_path / "nothere.pth")
    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as fh:
        pickle.dump({"model": {"x": CSLStudent}}, fh)      # a class reference, not an array
    with pytest.raises(ValueError, match="refusing"):
        load_backbone_weights(ResNetTrunk("resnet18"), evil)


def test_eval_forward_equals_the_final_prediction_of_the_deep_supervision_path():
    """Eval mode makes the intermediate (attention-mask) predictions from E resized to each level:
    the final outputs equal those of the path that makes every prediction at H/4 x W/4."""
    torch.manual_seed(5)
    model = build_student(get_preset("r18_fast")).eval()
    x = torch.rand(2, 3, 96, 160) * 255
    with torch.no_grad():
        fast = model(x)
        model.transformer_decoder.train()  # every prediction at full size; student stays in eval (no aux)
        full = model(x)
    torch.testing.assert_close(fast.region_logits, full.region_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.validity_logits, full.validity_logits, rtol=1e-5, atol=1e-5)
