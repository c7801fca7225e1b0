"""The CSL student network (pure PyTorch, no ROS): class-agnostic Mask2Former with validity scores
(ResNet + FPN pixel decoder + masked-attention decoder), the scheme-1 distillation head, training
losses, checkpoints, and CSL's post-processing (soft assignment, Eq. 2; structure-constrained fusion,
Eq. 3; the mask split)."""
from .assignment import (FUSION_MODES, connected_components, hard_assign, masks_from_components, soft_assign,
                         soft_assign_logits, soft_assign_region_logits, split_label_map, split_masks,
                         structure_constrained_fusion)
from .backbone import ResNetTrunk, detectron2_to_torchvision_keys, load_backbone_weights, read_weight_file
from .checkpoint import LoadedCheckpoint, file_sha256, load_checkpoint, read_checkpoint, save_checkpoint
from .config import BACKBONES, PRESETS, ModelConfig, get_preset
from .criterion import LossConfig, SetCriterion
from .matcher import HungarianMatcher, point_sample
from .student import (OUTPUT_STRIDE, CSLStudent, StudentOutput, build_student, optimizer_param_groups,
                      upsample_to_input)

__all__ = [
    "BACKBONES", "CSLStudent", "FUSION_MODES", "HungarianMatcher", "LoadedCheckpoint", "LossConfig",
    "ModelConfig", "OUTPUT_STRIDE", "PRESETS", "ResNetTrunk", "SetCriterion", "StudentOutput", "build_student",
    "connected_components", "detectron2_to_torchvision_keys", "file_sha256", "get_preset", "hard_assign",
    "load_backbone_weights", "load_checkpoint", "masks_from_components", "optimizer_param_groups",
    "point_sample", "read_checkpoint", "read_weight_file", "save_checkpoint", "soft_assign",
    "soft_assign_logits", "soft_assign_region_logits", "split_label_map", "split_masks", "structure_constrained_fusion",
    "upsample_to_input",
]
