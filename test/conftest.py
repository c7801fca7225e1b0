"""Suite-wide settings, applied before any test imports torch."""
import os

# Spin-waiting OpenMP threads make torch steps ~20x slower when the cores are shared.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Fast DDS reads its profile once per process, before the first participant: the large-image profile
# (csl_ros.ros.dds) must be in place before any test creates an rclpy context.
from csl_ros.ros.dds import use_large_image_profile  # noqa: E402

use_large_image_profile()


import pytest  # noqa: E402  (after the environment settings above)


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """Random-weight student (r18_lite) and closed-set segmenter files for end-to-end tests:
    ``[student_path=..., teacher_path=...]`` detector settings."""
    import torch

    from csl_ros.model import build_student, get_preset, save_checkpoint
    from csl_ros.teachers.segmenter import ClosedSetSegmenter, preset, save_segmenter

    d = tmp_path_factory.mktemp("tiny_models")
    torch.manual_seed(0)
    save_checkpoint(d / "student.safetensors", build_student(get_preset("r18_lite")).eval())
    torch.manual_seed(1)
    save_segmenter(ClosedSetSegmenter(preset("fpn_resnet18")).eval(), d / "seg.safetensors")
    return [f"student_path={d / 'student.safetensors'}", f"teacher_path={d / 'seg.safetensors'}"]


def _tiny_labels(k):
    return {"id2label": {i: f"class{i}" for i in range(k)}, "label2id": {f"class{i}": i for i in range(k)}}


@pytest.fixture(scope="session")
def tiny_hf_models(tmp_path_factory):
    """Tiny random-weight Hugging Face models saved with ``save_pretrained`` (no download) and their
    processor configs, hashes recorded: ``{"segformer": dir, "mask2former": dir}``. Network input
    64×64 (SegFormer fixed size; Mask2Former shortest edge 64, size divisor 32)."""
    pytest.importorskip("transformers")
    import torch
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                              Mask2FormerImageProcessor, SegformerConfig,
                              SegformerForSemanticSegmentation, SegformerImageProcessor, SwinConfig)

    from csl_ros.teachers.hf import record_hashes

    root = tmp_path_factory.mktemp("hf_models")
    torch.manual_seed(0)
    seg = SegformerForSemanticSegmentation(SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=5, **_tiny_labels(5))).eval()
    seg.save_pretrained(root / "segformer")
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(root / "segformer")
    torch.manual_seed(1)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=32, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 1], window_size=2,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    m2f = Mask2FormerForUniversalSegmentation(Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
        encoder_feedforward_dim=32, dim_feedforward=32, num_queries=6, decoder_layers=2,
        encoder_layers=1, num_attention_heads=2, num_labels=5, **_tiny_labels(5))).eval()
    m2f.save_pretrained(root / "mask2former")
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 256}).save_pretrained(
        root / "mask2former")
    for name in ("segformer", "mask2former"):
        record_hashes(root / name, source=f"test: tiny random {name}")
    return {"segformer": root / "segformer", "mask2former": root / "mask2former"}
