"""The closed-set semantic segmenter under the logit-based teachers (msp, maxlogit, sml, entropy, energy).

Architectures come from torchvision (never downloading weights: ``weights=None,
weights_backbone=None``), plus one small custom model:

* ``deeplabv3_resnet50`` / ``deeplabv3_resnet101`` / ``fcn_resnet50`` / ``fcn_resnet101`` /
  ``deeplabv3_mobilenet_v3_large`` / ``lraspp_mobilenet_v3_large``: torchvision's models with their
  state-dict key names, so checkpoints trained with torchvision's reference scripts load as they are
  (``deeplabv3_resnet50`` is the one for real Cityscapes use).
* ``fpn_resnet18``: **custom** (not a torchvision model): torchvision's ResNet-18 trunk (keys
  ``backbone.conv1`` ... ``backbone.layer4``) with a small FPN decoder: 1×1 laterals from strides 8,
  16 and 32 to 128 channels, top-down bilinear sums, 3×3 conv-BN-ReLU and a 1×1 classifier at stride 8,
  bilinearly upsampled to the input. It trains from scratch on CPU at 256×512 in minutes.

The shipped synthroad default is ``lraspp_mobilenet_v3_large`` (3.2 M parameters, a few MB in fp16).

Input: RGB, uint8 in [0, 255] or float in [0, 1], B×3×H×W, normalised inside the model with the
ImageNet mean/std of the config. Output: logits B×K×H×W at the input resolution (K = 19 Cityscapes
trainIds by default).

Checkpoints (``save_segmenter``/``load_segmenter``): ``.safetensors`` with the ``SegmenterConfig`` and a
SHA-256 of the weights in the header metadata, or ``.pt``/``.pth`` dicts loaded with
``weights_only=True``. Plain torchvision state dicts (no config) are recognised from their keys.
Any mismatch is refused with a ValueError naming the file.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
import torchvision.models.segmentation as tvseg
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torchvision.models import resnet18

from csl_ros.model.integrity import torch_load_tensors, verify_weights, weights_sha256

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CITYSCAPES_CLASSES = 19
CHECKPOINT_FORMAT = "csl_ros.segmenter"

TORCHVISION_ARCHS = ("deeplabv3_resnet50", "deeplabv3_resnet101", "fcn_resnet50", "fcn_resnet101",
                     "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")
ARCHS = TORCHVISION_ARCHS + ("fpn_resnet18",)
# The final classifier weight of each architecture (its first dimension is K).
_CLASSIFIER_KEY = {"deeplabv3_resnet50": "classifier.4.weight", "deeplabv3_resnet101": "classifier.4.weight",
                   "deeplabv3_mobilenet_v3_large": "classifier.4.weight",
                   "fcn_resnet50": "classifier.4.weight", "fcn_resnet101": "classifier.4.weight",
                   "lraspp_mobilenet_v3_large": "classifier.high_classifier.weight",
                   "fpn_resnet18": "classifier.weight"}
_NO_AUX = ("lraspp_mobilenet_v3_large", "fpn_resnet18")


@dataclass(frozen=True)
class SegmenterConfig:
    """What is needed to rebuild a segmenter; stored beside its weights in every checkpoint."""

    arch: str = "lraspp_mobilenet_v3_large"
    num_classes: int = CITYSCAPES_CLASSES
    aux_loss: bool = False          # torchvision's auxiliary FCN head (training only; not in forward)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"unknown segmenter architecture {self.arch!r}; choose one of {', '.join(ARCHS)}")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.aux_loss and self.arch in _NO_AUX:
            raise ValueError(f"{self.arch} has no auxiliary head (aux_loss must be false)")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3:
                raise ValueError(f"{name} needs 3 values (RGB), got {v!r}")
            object.__setattr__(self, name, tuple(float(x) for x in v))
        if min(self.std) <= 0:
            raise ValueError(f"std values must be > 0, got {self.std}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "SegmenterConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown segmenter config key(s): {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


PRESETS: dict[str, SegmenterConfig] = {arch: SegmenterConfig(arch=arch) for arch in ARCHS}
DEFAULT_PRESET = "lraspp_mobilenet_v3_large"   # the shipped synthroad teacher base


def preset(name: str, **overrides) -> SegmenterConfig:
    """A named preset (``PRESETS``), optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown segmenter preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class FPNResNet18(nn.Module):
    """Custom small segmenter: ResNet-18 trunk + 3-level FPN decoder at stride 8 (module docstring)."""

    def __init__(self, num_classes: int, width: int = 128):
        super().__init__()

        trunk = resnet18(weights=None)
        del trunk.fc, trunk.avgpool  # classification head unused
        self.backbone = trunk
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in (128, 256, 512)])
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        t = self.backbone
        c2 = t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x)))))
        c3 = t.layer2(c2)
        c4 = t.layer3(c3)
        c5 = t.layer4(c4)
        p = self.lateral[2](c5)
        p = self.lateral[1](c4) + F.interpolate(p, size=c4.shape[-2:], mode="bilinear", align_corners=False)
        p = self.lateral[0](c3) + F.interpolate(p, size=c3.shape[-2:], mode="bilinear", align_corners=False)
        out = self.classifier(self.fuse(p))
        return {"out": F.interpolate(out, size=size, mode="bilinear", align_corners=False)}


def build_network(config: SegmenterConfig) -> nn.Module:
    """The bare network (torchvision or custom), randomly initialised; never downloads anything."""
    if config.arch == "fpn_resnet18":
        return FPNResNet18(config.num_classes)

    builder = getattr(tvseg, config.arch)
    kwargs = dict(weights=None, weights_backbone=None, num_classes=config.num_classes)
    if config.arch not in _NO_AUX:
        kwargs["aux_loss"] = config.aux_loss
    return builder(**kwargs)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """Validate a B×3×H×W RGB batch and return it as float32 in [0, 1].

    uint8 is read as [0, 255]; floating input must already be in [0, 1].
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be B×3×H×W RGB, got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    if images.numel() and (float(images.min()) < -1e-3 or float(images.max()) > 1.0 + 1e-3):
        raise ValueError("floating-point images must be in [0, 1] (pass uint8 for 0..255), got "
                         f"values in [{float(images.min()):.3g}, {float(images.max()):.3g}]")
    return images.float()


class ClosedSetSegmenter(nn.Module):
    """Image batch (uint8 or [0,1] float, B×3×H×W RGB) → logits B×K×H×W at the input resolution."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        self.net = build_network(config)
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (to_unit_float(images) - self.mean) / self.std

    def forward(self, images: torch.Tensor, with_aux: bool = False):
        out = self.net(self.normalize(images))
        if with_aux:
            return out["out"], out.get("aux")
        return out["out"]


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------

def save_segmenter(model: ClosedSetSegmenter, path: str | os.PathLike, dtype: torch.dtype | None = None,
                   ) -> Path:
    """Save weights + config. ``.safetensors`` (config and weight hash in the header metadata) or
    ``.pt``/``.pth`` (a dict loadable with ``weights_only=True``). ``dtype=torch.float16`` halves the
    file (floating tensors only); loading casts back to float32."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(),
            "weights_sha256": weights_sha256(state)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        save_file(state, str(tmp), metadata={"format": meta["format"],
                                             "config": json.dumps(meta["config"]),
                                             "weights_sha256": meta["weights_sha256"]})
    elif path.suffix in (".pt", ".pth"):
        torch.save({**meta, "state_dict": state}, tmp)
    else:
        raise ValueError(f"{path}: segmenter checkpoints must end in .safetensors, .pt or .pth")
    os.replace(tmp, path)
    return path


def _read_checkpoint(path: Path) -> tuple[dict, dict | None, str | None]:
    """(state dict, stored config dict or None, stored weight hash or None)."""
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
        config = None
        if "config" in meta:
            try:
                config = json.loads(meta["config"])
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: corrupt segmenter config in the header ({exc})") from None
        return state, config, meta.get("weights_sha256")
    if path.suffix in (".pt", ".pth"):
        obj = torch_load_tensors(path, "segmenter checkpoint (save only tensors, e.g. "
                                       "torch.save(checkpoint['model'], 'segmenter.pth'))")
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        if obj.get("format") == CHECKPOINT_FORMAT:
            return obj["state_dict"], obj.get("config"), obj.get("weights_sha256")
        for key in ("model", "state_dict"):  # torchvision reference scripts / Lightning-style wrappers
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise ValueError(f"{path}: not a state dict (some values are not tensors)")
        return obj, None, None
    raise ValueError(f"{path}: unsupported segmenter checkpoint type (use .safetensors, .pt or .pth)")


def infer_config(state: Mapping[str, torch.Tensor], source: str = "state dict") -> SegmenterConfig:
    """Recognise the architecture of a checkpoint without a stored config from its key names."""
    keys = {k for k in state if not k.startswith("aux_classifier.")}
    for arch in ARCHS:
        with torch.device("meta"):
            net = build_network(SegmenterConfig(arch=arch))
        if set(net.state_dict()) == keys:
            k = int(state[_CLASSIFIER_KEY[arch]].shape[0])
            aux = any(key.startswith("aux_classifier.") for key in state)
            return SegmenterConfig(arch=arch, num_classes=k, aux_loss=aux and arch not in _NO_AUX)
    raise ValueError(f"{source}: the keys match none of the supported architectures "
                     f"({', '.join(ARCHS)}); pass the preset explicitly")


def load_segmenter(path: str | os.PathLike, preset_name: str | None = None, device: str | torch.device = "cpu",
                   expected_num_classes: int | None = None) -> ClosedSetSegmenter:
    """Load a segmenter checkpoint (module docstring) in eval mode on ``device``.

    ``preset_name`` is needed only for plain state dicts whose architecture cannot be recognised, and
    must agree with a stored config. Refuses (ValueError naming the file) modified weights, missing or
    unexpected keys, shape mismatches and a class count other than ``expected_num_classes``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter checkpoint not found: {path}")
    state, stored, stored_hash = _read_checkpoint(path)
    # Our own files (with a stored config) always carry the hash; a plain third-party state dict
    # (torchvision reference scripts) has none to check.
    if stored is not None or stored_hash is not None:
        verify_weights(path, state, stored_hash, "segmenter")
    try:
        if stored is not None:
            config = SegmenterConfig.from_dict(stored)
            if preset_name is not None and preset_name != config.arch:
                raise ValueError(f"stored architecture {config.arch!r} differs from the requested "
                                 f"preset {preset_name!r}")
        elif preset_name is not None:
            cls_key = _CLASSIFIER_KEY.get(preset_name) if preset_name in PRESETS else None
            k = int(state[cls_key].shape[0]) if cls_key in state else CITYSCAPES_CLASSES
            aux = any(key.startswith("aux_classifier.") for key in state) and preset_name not in _NO_AUX
            config = preset(preset_name, num_classes=k, aux_loss=aux)
        else:
            config = infer_config(state, source=str(path))
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    if expected_num_classes is not None and config.num_classes != expected_num_classes:
        raise ValueError(f"{path}: segmenter has {config.num_classes} classes, expected "
                         f"{expected_num_classes}")
    model = ClosedSetSegmenter(config)
    own = model.net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not fit {config.arch} "
                         f"(missing {len(missing)} key(s){': ' + ', '.join(missing[:4]) if missing else ''}; "
                         f"unexpected {len(unexpected)}{': ' + ', '.join(unexpected[:4]) if unexpected else ''})")
    bad = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
           if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(f"{path}: tensor shapes do not fit {config.arch}: " + "; ".join(bad[:4]))
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.net.load_state_dict(state, strict=True)
    return model.to(device).eval()
