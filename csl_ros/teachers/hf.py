"""Hugging Face ``transformers`` segmenters as teachers and region proposers (SegFormer, Mask2Former).

A teacher source is a model directory (``config.json`` + ``*.safetensors`` + ``preprocessor_config.json``,
as ``save_pretrained`` or ``csl-ros models fetch`` leave it) or ``hf:<repo id>[@revision]``, resolved
in the local Hugging Face cache. Nothing is downloaded unless ``allow_download`` is set.

Safety: only safetensors weights are read (a directory with only ``pytorch_model.bin``, a pickle, is
refused), ``trust_remote_code`` is never set, and every file listed in the directory's
``csl_ros.sha256.json`` (written by ``csl-ros models fetch`` / ``import``) is checked before loading;
a directory without that record is refused with the command that writes it.

Pre-processing follows the processor config: rescale (1/255), normalise with ``image_mean`` /
``image_std``, resize to ``size`` ({height, width}, or {shortest_edge[, longest_edge]} keeping the
aspect ratio; a bare int is read as transformers reads it), pad bottom/right to ``size_divisor``
(as Mask2Former's reference does with its size divisibility; the transformers processor instead
rounds the resized size up to a multiple, a slight stretch); outputs are cropped and resized back
to the image, so a B×3×H×W batch gives B×K×H×W.

* SegFormer: the per-pixel logits bilinearly upsampled to the image (what
  ``post_process_semantic_segmentation`` does).
* Mask2Former: per-pixel class scores ``l_c(x) = Σ_q softmax(cls_q)_c · sigmoid(mask_q(x))`` over the
  K real classes (no-object column dropped), with the mask logits bilinearly upsampled to the padded
  input size, cropped, resized to the image and only then passed through the sigmoid: Mask2Former's
  reference ``semantic_inference`` (not the transformers processor, which goes through 384×384). The
  raw query outputs of the last call are kept for the region proposer (one forward pass for both).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from csl_ros.model.integrity import sha256_file
from csl_ros.teachers.onnx_runner import set_onnx_metadata
from csl_ros.teachers.segmenter import IMAGENET_MEAN, IMAGENET_STD, to_unit_float

HF_PREFIX = "hf:"
HASH_RECORD = "csl_ros.sha256.json"
# transformers architectures we can run, and what their output is.
ARCHITECTURES = {"SegformerForSemanticSegmentation": "segformer",
                 "Mask2FormerForUniversalSegmentation": "mask2former"}
PICKLE_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


def is_hf_source(source: str | os.PathLike) -> bool:
    """True for ``hf:<repo>`` or a directory holding a ``config.json``."""
    s = str(source or "")
    return s.startswith(HF_PREFIX) or (bool(s) and (Path(s) / "config.json").is_file())


def parse_hf_spec(spec: str) -> tuple[str, str | None]:
    """``hf:org/name@rev`` → (``org/name``, ``rev`` or None)."""
    body = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    repo, _, rev = body.partition("@")
    if not repo or repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"{spec!r} is not hf:<owner>/<name>[@revision]")
    return repo, rev or None


def resolve_hf_dir(source: str | os.PathLike, allow_download: bool = False) -> Path:
    """The local directory of ``source`` (a directory, or ``hf:`` resolved in the Hugging Face cache).
    Downloads only when ``allow_download``; otherwise a model not in the cache is one clear error."""
    s = str(source)
    if not s.startswith(HF_PREFIX):
        path = Path(s).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"Hugging Face model directory not found: {path}")
        return path
    repo, rev = parse_hf_spec(s)
    # optional dependency (the hf extra, with transformers): only hf: sources need it
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=rev, local_files_only=not allow_download,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.md"]))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{s}: not in the local Hugging Face cache; run `csl-ros models fetch "
                                f"{repo}` on a machine with network (or set allow_download)") from None
    except Exception as exc:  # network and hub errors: one line, no traceback
        raise ValueError(f"{s}: cannot get the model from the Hugging Face hub "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


# --------------------------------------------------------------------------------------------------
# integrity
# --------------------------------------------------------------------------------------------------

def _model_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name != HASH_RECORD
                  and (p.suffix in (".safetensors", ".json", ".onnx") or p.name in PICKLE_WEIGHTS))


def record_hashes(directory: str | os.PathLike, source: str = "") -> dict:
    """Write ``csl_ros.sha256.json`` in ``directory``: the SHA-256 of every weight and config file."""
    directory = Path(directory)
    check_safetensors_only(directory)
    files = {p.name: sha256_file(p) for p in _model_files(directory) if p.name not in PICKLE_WEIGHTS}
    record = {"format": "csl_ros.hf_model", "source": source, "files": files}
    tmp = directory / (HASH_RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True))
    os.replace(tmp, directory / HASH_RECORD)
    return record


def read_hash_record(directory: Path) -> dict:
    path = directory / HASH_RECORD
    if not path.is_file():
        raise ValueError(f"{directory}: no {HASH_RECORD}; its weights cannot be verified: record them "
                         f"with `csl-ros models import {directory}`")
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("no files listed")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: corrupt hash record ({exc})") from None
    return record


def verify_hashes(directory: str | os.PathLike) -> dict:
    """Check every file of the hash record; a changed, missing or unrecorded weight file is refused
    with its name. Returns the record."""
    directory = Path(directory)
    record = read_hash_record(directory)
    for name, digest in sorted(record["files"].items()):
        path = directory / name
        if not path.is_file():
            raise ValueError(f"{path}: recorded in {HASH_RECORD} but missing")
        if sha256_file(path) != digest:
            raise ValueError(f"{path}: SHA-256 differs from {HASH_RECORD} (modified or corrupt file); "
                             "refused")
    extra = [p.name for p in directory.glob("*.safetensors") if p.name not in record["files"]]
    if extra:
        raise ValueError(f"{directory / extra[0]}: weight file not in {HASH_RECORD}; refused")
    return record


def model_digest(directory: Path) -> str:
    """One SHA-256 naming the verified weights of a model directory (for statistics files)."""
    files = read_hash_record(directory)["files"]
    text = "\n".join(f"{k} {v}" for k, v in sorted(files.items()) if k.endswith(".safetensors"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_safetensors_only(directory: Path) -> None:
    if not any(directory.glob("*.safetensors")):
        pickles = [n for n in PICKLE_WEIGHTS if (directory / n).is_file()]
        what = f" (only {', '.join(pickles)}: pickled weights, which csl_ros never loads)" if pickles else ""
        raise ValueError(f"{directory}: no .safetensors weights{what}; convert the model to "
                         "safetensors (save_pretrained(..., safe_serialization=True))")


# --------------------------------------------------------------------------------------------------
# pre-processing from preprocessor_config.json
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocessing:
    """Normalisation and input size of a Hugging Face image processor config."""

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on the [0, 1] scale
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    height: int | None = None          # fixed size, or
    width: int | None = None
    shortest_edge: int | None = None   # aspect-preserving size
    longest_edge: int | None = None
    size_divisor: int = 0

    @classmethod
    def from_file(cls, path: Path) -> "Preprocessing":
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent}: no preprocessor_config.json (normalisation and input "
                                    "size come from it)")
        try:
            cfg = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if cfg.get("do_normalize", True):
            # Statistics apply to the rescaled pixels; express them on the [0, 1] scale.
            mean = tuple(float(m) / (rescale * 255) for m in cfg.get("image_mean", cls.mean))
            std = tuple(float(s) / (rescale * 255) for s in cfg.get("image_std", cls.std))
        size = cfg.get("size") if cfg.get("do_resize", True) else None
        kind = str(cfg.get("image_processor_type") or cfg.get("feature_extractor_type") or "")
        kw: dict = {}
        if isinstance(size, int):
            # as transformers reads a bare size: the shortest edge for (Mask)MaskFormer processors
            # (with max_size as the longest), a square for the others (SegFormer)
            if "MaskFormer" in kind or "Mask2Former" in kind:
                kw["shortest_edge"] = size
                if cfg.get("max_size"):
                    kw["longest_edge"] = int(cfg["max_size"])
            else:
                kw.update(height=size, width=size)
        elif isinstance(size, dict):
            if "height" in size and "width" in size:
                kw.update(height=int(size["height"]), width=int(size["width"]))
            elif "shortest_edge" in size:
                kw["shortest_edge"] = int(size["shortest_edge"])
                if size.get("longest_edge"):
                    kw["longest_edge"] = int(size["longest_edge"])
        divisor = cfg.get("size_divisor", cfg.get("size_divisibility", 0))  # older configs: divisibility
        return cls(mean=mean, std=std, size_divisor=int(divisor or 0), **kw)

    def network_size(self, h: int, w: int) -> tuple[int, int]:
        """Size the processor resizes an h×w image to."""
        if self.height and self.width:
            return self.height, self.width
        if self.shortest_edge:
            s = self.shortest_edge / min(h, w)
            if self.longest_edge and max(h, w) * s > self.longest_edge:
                s = self.longest_edge / max(h, w)
            return max(1, int(round(h * s))), max(1, int(round(w * s)))
        return h, w

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 / [0, 1] B×3×H×W → (normalised, resized and padded batch, un-padded network size)."""
        x = to_unit_float(images)
        size = self.network_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.size_divisor:
            d = self.size_divisor
            ph, pw = math.ceil(size[0] / d) * d - size[0], math.ceil(size[1] / d) * d - size[1]
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph))
        return x, size


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------

@dataclass
class QueryOutputs:
    """Raw Mask2Former outputs of one batch: class logits B×Q×(K+1), mask logits B×Q×h×w (stride 4 of
    the padded network input) and the un-padded network size."""

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    padded_size: tuple[int, int]
    network_size: tuple[int, int]
    source: torch.Tensor | None = None  # the image batch they come from (shared regions check it)


def mask2former_class_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """``l_c = Σ_q softmax(cls_q)[:K]_c · sigmoid(mask_q)``: B×Q×(K+1), B×Q×H×W → B×K×H×W."""
    probs = class_logits.float().softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.float().sigmoid())


class HFSegmenter(nn.Module):
    """A transformers SegFormer / Mask2Former behaving as a csl_ros segmenter: images → B×K×H×W."""

    def __init__(self, network: nn.Module, kind: str, preprocessing: Preprocessing, path: Path,
                 class_names: list[str], digest: str):
        super().__init__()
        self.network = network.eval()
        self.kind = kind
        self.preprocessing = preprocessing
        self.path = path
        self.class_names = class_names
        self.digest = digest
        self.last_queries: QueryOutputs | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _upsample_to_image(self, y: torch.Tensor, padded: tuple[int, int], size: tuple[int, int],
                           image_size: tuple[int, int]) -> torch.Tensor:
        """Stride-s output → padded network size → crop the padding → image size (all bilinear)."""
        if tuple(y.shape[-2:]) != padded:
            y = F.interpolate(y, size=padded, mode="bilinear", align_corners=False)
        y = y[..., :size[0], :size[1]]
        if size != image_size:
            y = F.interpolate(y, size=image_size, mode="bilinear", align_corners=False)
        return y

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_size = tuple(images.shape[-2:])
        x, size = self.preprocessing(images)
        padded = tuple(x.shape[-2:])
        out = self.network(pixel_values=x)
        if self.kind == "segformer":
            self.last_queries = None
            return self._upsample_to_image(out.logits.float(), padded, size, image_size)
        self.last_queries = QueryOutputs(out.class_queries_logits, out.masks_queries_logits, padded, size,
                                         source=images)
        masks = self._upsample_to_image(out.masks_queries_logits.float(), padded, size, image_size)
        return mask2former_class_scores(out.class_queries_logits, masks)

    def query_outputs(self, images: torch.Tensor) -> QueryOutputs:
        """Run the network (Mask2Former only) and return its raw query outputs."""
        if self.kind != "mask2former":
            raise ValueError(f"{self.path}: a {self.kind} model has no mask queries (regions need a "
                             "Mask2Former)")
        self.forward(images)
        return self.last_queries


def load_hf_segmenter(source: str | os.PathLike, device: str | torch.device = "cpu") -> HFSegmenter:
    """Load a SegFormer / Mask2Former model directory or ``hf:`` repo (from the local cache) after
    checking its hashes. :func:`csl_ros.teachers.real_models.load_hf_model` fetches a missing ``hf:``
    model first when downloads are allowed."""
    directory = resolve_hf_dir(source)
    check_safetensors_only(directory)
    verify_hashes(directory)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{directory / 'config.json'}: unreadable ({exc})") from None
    archs = [a for a in config.get("architectures") or [] if a in ARCHITECTURES]
    if not archs:
        raise ValueError(f"{directory}: architecture {config.get('architectures')} is not supported; "
                         f"csl_ros runs {', '.join(ARCHITECTURES)}")
    preprocessing = Preprocessing.from_file(directory / "preprocessor_config.json")
    try:  # optional dependency (the hf extra): only Hugging Face teachers need it
        import transformers
    except ImportError:
        raise ImportError("Hugging Face teachers need the transformers package (pip install "
                          "transformers)") from None
    from transformers.utils import logging as hf_logging  # optional (see above)

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would repeat our own checks
    try:
        network = getattr(transformers, archs[0]).from_pretrained(
            str(directory), local_files_only=True, use_safetensors=True, trust_remote_code=False)
    except Exception as exc:
        raise ValueError(f"{directory}: transformers cannot load the model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    id2label = network.config.id2label
    names = [str(id2label[i]) for i in sorted(id2label)]
    return HFSegmenter(network, ARCHITECTURES[archs[0]], preprocessing, directory, names,
                       model_digest(directory)).to(device)


# --------------------------------------------------------------------------------------------------
# region proposals (regions: mask2former)
# --------------------------------------------------------------------------------------------------

class Mask2FormerRegions:
    """Eq. 2's inputs from a Mask2Former's queries: ``r_n = sigmoid(mask logits)`` and
    ``v_n = 1 − p_n(no object)`` (the softmax of the class logits, last column).

    ``shared``: the model is also the teacher and has just run on the same batch (the same tensor
    object), so its query outputs are reused (one forward pass for both); for any other batch it runs. The masks are returned at stride 4 of the given
    image batch (the detector's letterboxed input), as the CSL student's region logits are.
    """

    def __init__(self, model: HFSegmenter, shared: bool = False):
        if model.kind != "mask2former":
            raise ValueError(f"regions: mask2former needs a Mask2Former; {model.path} is a {model.kind}")
        self.model = model
        self.shared = shared

    @property
    def path(self) -> Path:
        return self.model.path

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """B×3×H×W → (region logits B×Q×⌈H/4⌉×⌈W/4⌉: r_n = sigmoid of them, validity v_n B×Q)."""
        q = self.model.last_queries if self.shared else None
        if q is None or q.source is not images:
            q = self.model.query_outputs(images)
        h, w = images.shape[-2:]
        masks = q.mask_logits.float()
        # the mask grid covers the padded network input at its own stride: crop the padding first
        sy, sx = q.padded_size[0] / masks.shape[-2], q.padded_size[1] / masks.shape[-1]
        masks = masks[..., :math.ceil(q.network_size[0] / sy), :math.ceil(q.network_size[1] / sx)]
        out = (math.ceil(h / 4), math.ceil(w / 4))
        if tuple(masks.shape[-2:]) != out:
            masks = F.interpolate(masks, size=out, mode="bilinear", align_corners=False)
        validity = 1.0 - q.class_logits.float().softmax(-1)[..., -1]
        return masks, validity


# --------------------------------------------------------------------------------------------------
# ONNX export (for onnxruntime / TensorRT deployments of the same teacher)
# --------------------------------------------------------------------------------------------------

class _ExportedScore(nn.Module):
    """Normalised pixel values at the network size → the raw RbA map N×1×H×W (``rba``) or the class
    scores / logits N×K×H×W (``class_scores``)."""

    def __init__(self, model: HFSegmenter, output: str):
        super().__init__()
        self.network, self.kind, self.output = model.network, model.kind, output

    def forward(self, pixel_values):
        size = pixel_values.shape[-2:]
        out = self.network(pixel_values=pixel_values)
        if self.kind == "segformer":
            return F.interpolate(out.logits, size=size, mode="bilinear", align_corners=False)
        masks = F.interpolate(out.masks_queries_logits, size=size, mode="bilinear", align_corners=False)
        scores = mask2former_class_scores(out.class_queries_logits, masks)
        if self.output == "rba":
            return -torch.tanh(scores).sum(dim=1, keepdim=True)
        return scores


def export_onnx(model: HFSegmenter, path: str | os.PathLike, size: tuple[int, int],
                output: str = "class_scores", opset: int = 20) -> Path:
    """Export ``model`` at the fixed input ``size`` (a multiple of the processor's size divisor) to
    ONNX, with the csl_ros metadata the ONNX teacher reads: input normalisation (ImageNet statistics
    of the processor are required), and for ``output="rba"`` a ready map with its declared range
    [−K, 0] and RbA's calibration ``clip(1 + s, 0, 1)``."""
    if output not in ("class_scores", "rba"):
        raise ValueError(f"output must be class_scores or rba, got {output!r}")
    if output == "rba" and model.kind != "mask2former":
        raise ValueError(f"{model.path}: the rba output needs a Mask2Former, this is a {model.kind}")
    if not (np_close(model.preprocessing.mean, IMAGENET_MEAN) and np_close(model.preprocessing.std, IMAGENET_STD)):
        raise ValueError(f"{model.path}: the processor does not normalise with the ImageNet statistics, "
                         "which the ONNX teacher assumes")
    path = Path(path)
    with warnings.catch_warnings():  # tracer warnings about shape-dependent Python control flow
        warnings.simplefilter("ignore")
        torch.onnx.export(_ExportedScore(model, output).eval(), (torch.zeros(1, 3, *size),), str(path),
                          input_names=["images"], output_names=[output], opset_version=opset,
                          dynamo=False)
    _float_grids(path)
    meta = {"input_normalization": "imagenet"}
    if output == "rba":
        meta.update(output="anomaly_map", map_range=f"{-model.num_classes},0",
                    map_calibration=json.dumps({"method": "affine", "scale": 1.0, "offset": 1.0}))
    else:
        meta.update(output="logits")
    set_onnx_metadata(path, **meta)
    return path


def _float_grids(path: Path) -> None:
    """Cast double sampling grids to float: the tracer keeps Mask2Former's deformable-attention
    grid in float64, and onnxruntime has no GridSample kernel for a double grid."""
    import onnx  # optional dependency: only ONNX export needs it
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    nodes, changed = [], False
    for node in model.graph.node:
        if node.op_type == "GridSample" and types.get(node.input[1]) == TensorProto.DOUBLE:
            cast_out = node.input[1] + "_as_float"
            nodes.append(helper.make_node("Cast", [node.input[1]], [cast_out], to=TensorProto.FLOAT,
                                          name=node.name + "_grid_cast"))
            node.input[1] = cast_out
            changed = True
        nodes.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))


def np_close(a, b, tol: float = 1e-6) -> bool:
    return all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))
