"""ResNet trunk (torchvision layout) returning res2..res5, and loading of user-supplied ImageNet weights.

The trunk keeps torchvision's attribute names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``) so a
torchvision ``resnet*.pth`` state dict loads as it is (minus ``fc.*``). Detectron2-style checkpoints
(the ``R-50.pkl`` that Mask2Former trains from is torchvision's R-50 converted to detectron2 names:
``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res2.0.conv1.weight``, ``res2.0.conv1.norm.*``,
``res2.0.shortcut.weight``, ...) are renamed by :func:`detectron2_to_torchvision_keys`.

Caveat: the *MSRA/caffe2* detectron2 R-50 (``STRIDE_IN_1X1: True``, BGR input) has the same key names
after conversion but a different architecture/normalisation; it cannot be told apart from its keys
and is not supported. Use the torchvision-converted one (spec section 1.2: ``STRIDE_IN_1X1: False``).
"""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import Mapping

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from csl_ros.registry import Registry

# Residual blocks per stage and block type per depth (He et al. 2016, as in torchvision).
RESNET_LAYOUT = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
}
# Output channels of res2..res5 per depth: the stage widths times the block's expansion (1 or 4).
RESNET_CHANNELS = {name: tuple(c * (1 if kind == "basic" else 4) for c in (64, 128, 256, 512))
                   for name, (kind, _) in RESNET_LAYOUT.items()}

# Backbone builders: ``builder(config: ModelConfig) -> nn.Module`` whose ``forward(x)`` returns four
# feature maps at strides 4, 8, 16, 32 and whose ``out_channels`` gives their channels (the FPN pixel
# decoder reads it). ``ModelConfig.backbone`` is a name of this registry.
BACKBONES = Registry("backbone", help="")


def _narrow_resnet(name: str, width: float, norm_layer) -> nn.Module:
    """A torchvision-layout ResNet whose stem and stage widths (64, 128, 256, 512) are scaled by
    ``width``: same depth, blocks, strides and attribute names, ~width^2 of the parameters."""
    kind, blocks = RESNET_LAYOUT[name]
    block = torchvision.models.resnet.BasicBlock if kind == "basic" else torchvision.models.resnet.Bottleneck
    planes = [max(8, int(round(c * width))) for c in (64, 128, 256, 512)]
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1, net.relu = norm_layer(planes[0]), nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    inplanes = planes[0]
    for i, (p, n) in enumerate(zip(planes, blocks)):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or inplanes != p * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(inplanes, p * block.expansion, 1, stride=stride, bias=False),
                                       norm_layer(p * block.expansion))
        layers = [block(inplanes, p, stride, downsample, norm_layer=norm_layer)]
        inplanes = p * block.expansion
        layers += [block(inplanes, p, norm_layer=norm_layer) for _ in range(1, n)]
        setattr(net, f"layer{i + 1}", nn.Sequential(*layers))
    for m in net.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    net.out_channels = tuple(p * block.expansion for p in planes)
    return net


class ResNetTrunk(nn.Module):
    """torchvision ResNet without pooling/fc. ``forward`` returns (res2, res3, res4, res5) at strides
    4, 8, 16, 32 (spec section 2.1). ``width`` != 1 scales every stage's channels (a narrow trunk for
    small shipped models; ImageNet weights then no longer fit)."""

    def __init__(self, name: str = "resnet50", norm: str = "bn", width: float = 1.0):
        super().__init__()
        if name not in RESNET_CHANNELS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNET_CHANNELS)}")
        if norm not in ("bn", "frozen_bn"):
            raise ValueError(f"unknown backbone norm {norm!r}; choose 'bn' or 'frozen_bn'")
        if not 0 < width <= 4:
            raise ValueError(f"backbone width {width!r}: must be in (0, 4]")
        norm_layer = FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d
        if width == 1.0:
            net = getattr(torchvision.models, name)(weights=None, norm_layer=norm_layer)
            self.out_channels = RESNET_CHANNELS[name]
        else:
            net = _narrow_resnet(name, width, norm_layer)
            self.out_channels = net.out_channels
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.name = name
        self.width = width

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res2 = self.layer1(x)
        res3 = self.layer2(res2)
        res4 = self.layer3(res3)
        res5 = self.layer4(res4)
        return res2, res3, res4, res5


def build_resnet(config) -> ResNetTrunk:
    """The ResNet trunk of a :class:`~csl_ros.model.config.ModelConfig` (depth = its backbone name)."""
    return ResNetTrunk(config.backbone, config.backbone_norm, config.backbone_width)


for _name, (_kind, _blocks) in RESNET_LAYOUT.items():
    BACKBONES.register(_name, build_resnet, help=f"ResNet-{_name[6:]} ({_kind} blocks {_blocks}), "
                       "torchvision layout; ImageNet weights load at backbone_width 1")


def check_backbone(backbone: nn.Module, name: str = "backbone") -> tuple[int, int, int, int]:
    """The ``out_channels`` of a backbone module (four positive ints, res2..res5), or a ValueError."""
    channels = getattr(backbone, "out_channels", None)
    try:
        channels = tuple(int(c) for c in channels)
    except (TypeError, ValueError):
        channels = ()
    if len(channels) != 4 or min(channels) < 1:
        raise ValueError(f"{name} {type(backbone).__name__} must expose out_channels: the channels of its "
                         f"four feature maps at strides 4, 8, 16, 32 (got {getattr(backbone, 'out_channels', None)!r})")
    return channels


# --- weight files ----------------------------------------------------------------------------------

_D2_PREFIXES = ("backbone.bottom_up.", "backbone.", "module.")
_D2_NORM_SUFFIX = {"weight": "weight", "bias": "bias", "running_mean": "running_mean",
                   "running_var": "running_var", "num_batches_tracked": "num_batches_tracked"}


def _strip_prefix(key: str) -> str:
    for prefix in _D2_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def detectron2_to_torchvision_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a detectron2-style ResNet state dict to torchvision names.

    ``stem.conv1.weight`` -> ``conv1.weight``; ``stem.conv1.norm.X`` -> ``bn1.X``;
    ``resS.B.convI.weight`` -> ``layer{S-1}.B.convI.weight``; ``resS.B.convI.norm.X`` ->
    ``layer{S-1}.B.bnI.X``; ``resS.B.shortcut.weight`` -> ``layer{S-1}.B.downsample.0.weight``;
    ``resS.B.shortcut.norm.X`` -> ``layer{S-1}.B.downsample.1.X``. Prefixes ``backbone.bottom_up.`` /
    ``backbone.`` are stripped; non-backbone keys (heads, ``fc``/``linear``) are dropped. Keys already
    in torchvision form pass through, so mixed dicts are tolerated.
    """
    out: dict[str, Tensor] = {}
    for raw_key, value in state.items():
        key = _strip_prefix(raw_key)
        m = re.fullmatch(r"stem\.conv1\.(weight|bias)", key)
        if m:
            out[f"conv1.{m.group(1)}"] = value
            continue
        m = re.fullmatch(r"stem\.conv1\.norm\.(\w+)", key)
        if m:
            out[f"bn1.{m.group(1)}"] = value
            continue
        m = re.fullmatch(r"res([2-5])\.(\d+)\.(conv[123]|shortcut)\.(weight|bias|norm\.\w+)", key)
        if m:
            layer = f"layer{int(m.group(1)) - 1}.{m.group(2)}"
            conv, param = m.group(3), m.group(4)
            if conv == "shortcut":
                name = "downsample.1" if param.startswith("norm.") else "downsample.0"
            else:
                name = conv.replace("conv", "bn") if param.startswith("norm.") else conv
            out[f"{layer}.{name}.{param.removeprefix('norm.')}"] = value
            continue
        if re.fullmatch(r"(conv1|bn1|layer[1-4]\.\d+\.\w+(\.\d+)?)\.\w+", key):
            out[key] = value  # already torchvision-style
    return out


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for detectron2 ``.pkl`` weight files: dicts of numpy arrays, nothing else executes."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weight file")


def read_weight_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, ``.pth``/``.pt`` (``weights_only=True``) or a
    detectron2 ``.pkl`` (numpy arrays only). Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"backbone weight file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        elif path.endswith(".pkl"):
            with open(path, "rb") as fh:
                state = _NumpyOnlyUnpickler(io.BytesIO(fh.read()), encoding="latin1").load()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / foreign files: say which file and why
        raise ValueError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    tensors = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value))  # a copy; keeps 0-d arrays 0-d
        if isinstance(value, Tensor):
            tensors[str(key)] = value
    return tensors


def load_backbone_weights(trunk: ResNetTrunk, path: str | os.PathLike) -> list[str]:
    """Load torchvision- or detectron2-style ImageNet weights into ``trunk``.

    Returns the names of trunk buffers absent from the file that are harmless to miss
    (``num_batches_tracked``). Raises ValueError naming the file when any parameter or running
    statistic is missing or has the wrong shape (e.g. an R-50 file for an R-18 trunk).
    """
    state = detectron2_to_torchvision_keys(read_weight_file(path))
    # BatchNorm step counters carry no weights (and detectron2 files lack them): keep the trunk's.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    own = trunk.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[:4]})")
        if wrong:
            details.append(f"{len(wrong)} with wrong shape (e.g. {wrong[:3]})")
        raise ValueError(f"{os.fspath(path)}: not a {trunk.name} backbone checkpoint: "
                         + "; ".join(details))
    to_load = {k: state[k].to(own[k].dtype) for k in own if k in state}
    trunk.load_state_dict(to_load, strict=False)
    return [k for k in own if k not in state]
