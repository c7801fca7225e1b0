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
