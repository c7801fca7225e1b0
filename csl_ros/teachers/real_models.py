"""Public Cityscapes networks usable as teachers / region proposers, and their local installation.

``CATALOG``: the curated models ``csl-ros models list`` shows, with the accuracy their authors
published and their licence. Sources, per family (hand-written from the papers and model cards; this
machine has no network, so they were **not re-checked here** against the live pages):

* SegFormer B0–B5 (``nvidia/segformer-bN-finetuned-cityscapes-1024-1024``): Cityscapes val mIoU,
  single scale, from Table 1 of the SegFormer paper (Xie et al., NeurIPS 2021); parameters from the
  same table. Licence: the model cards say ``other`` (NVIDIA's SegFormer licence, research /
  non-commercial use).
* Mask2Former Swin-T/S/B/L (``facebook/mask2former-swin-*-cityscapes-{semantic,panoptic}``):
  Cityscapes val mIoU (semantic) and PQ (panoptic), single scale, from the Cityscapes table of the
  Mask2Former paper (Cheng et al., CVPR 2022) / its MODEL_ZOO.md. Licence: the model cards say
  ``other``; the Mask2Former code is MIT. R50 has no transformers checkpoint on the hub under
  ``facebook/`` that we know of: it is listed without a repo (convert it yourself and ``import``).

Installation: ``fetch`` downloads through ``huggingface_hub`` into the Hugging Face cache (so
``teacher_path: hf:<repo>`` finds it), converts a weights file that is only a PyTorch pickle to
safetensors (read with ``torch.load(weights_only=True)``, which executes no Python objects), and
writes ``csl_ros.sha256.json`` (SHA-256 of every weight and config file) into the model folder.
``import DIR`` does the same for a folder copied from another machine and records it in the index
``$CSL_ROS_HOME/models.json`` (default ``~/.cache/csl_ros``). ``verify`` re-checks the hashes; every
load of the model checks them too (``csl_ros.teachers.hf``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from csl_ros.model.integrity import torch_load_tensors
from csl_ros.teachers.hf import (HASH_RECORD, HF_PREFIX, PICKLE_WEIGHTS, HFSegmenter, load_hf_segmenter, parse_hf_spec,
                                 record_hashes, verify_hashes)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    repo: str | None           # Hugging Face repo id (None: no transformers checkpoint published)
    family: str                # segformer | mask2former
    backbone: str
    task: str                  # semantic | panoptic
    params_m: float | None     # parameters in millions, as published
    metric: str                # "mIoU 76.2" / "PQ 63.9" on Cityscapes val, single scale
    licence: str
    source: str


_SEGFORMER_SRC = "SegFormer paper (NeurIPS 2021) Table 1, Cityscapes val, single scale"
_M2F_SRC = "Mask2Former paper (CVPR 2022) Cityscapes table / MODEL_ZOO.md, val, single scale"
_NVIDIA = "other (NVIDIA SegFormer licence, per the model card)"
_META = "other (per the model card; Mask2Former code: MIT)"

CATALOG: dict[str, CatalogEntry] = {e.name: e for e in [
    *[CatalogEntry(f"segformer-b{i}", f"nvidia/segformer-b{i}-finetuned-cityscapes-1024-1024",
                   "segformer", f"MiT-B{i}", "semantic", p, f"mIoU {m}", _NVIDIA, _SEGFORMER_SRC)
      for i, p, m in [(0, 3.8, 76.2), (1, 13.7, 78.5), (2, 27.5, 81.0), (3, 47.3, 81.7),
                      (4, 64.1, 82.3), (5, 84.7, 82.4)]],
    CatalogEntry("mask2former-r50-semantic", None, "mask2former", "R50", "semantic", None,
                 "mIoU 79.4", "MIT (Mask2Former model zoo, detectron2 format)", _M2F_SRC),
    CatalogEntry("mask2former-r50-panoptic", None, "mask2former", "R50", "panoptic", None,
                 "PQ 62.1", "MIT (Mask2Former model zoo, detectron2 format)", _M2F_SRC),
    *[CatalogEntry(f"mask2former-swin-{size}-{task}",
                   f"facebook/mask2former-swin-{repo_size}-cityscapes-{task}", "mask2former",
                   f"Swin-{size[0].upper()}", task, None, metric, _META, _M2F_SRC)
      for size, repo_size, task, metric in [
          ("tiny", "tiny", "semantic", "mIoU 82.1"), ("small", "small", "semantic", "mIoU 82.6"),
          ("base", "base-IN21k", "semantic", "mIoU 83.3"), ("large", "large", "semantic", "mIoU 83.3"),
          ("tiny", "tiny", "panoptic", "PQ 63.9"), ("small", "small", "panoptic", "PQ 64.8"),
          ("base", "base-IN21k", "panoptic", "PQ 66.1"), ("large", "large", "panoptic", "PQ 66.6")]],
]}


def csl_home() -> Path:
    return Path(os.environ.get("CSL_ROS_HOME") or Path.home() / ".cache" / "csl_ros").expanduser()


def index_path() -> Path:
    return csl_home() / "models.json"


def read_index() -> dict[str, str]:
    path = index_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: corrupt model index ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: corrupt model index (not a mapping)")
    return {str(k): str(v) for k, v in data.items()}


def _register(name: str, directory: Path) -> None:
    index = read_index()
    index[name] = str(directory.resolve())
    path = index_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, path)


def convert_pickled_weights(directory: Path) -> Path | None:
    """Write ``model.safetensors`` from a ``pytorch_model.bin`` (read tensor-only, no Python objects
    executed) when the folder has no safetensors weights; returns the new file or None."""
    if any(directory.glob("*.safetensors")) or not (directory / "pytorch_model.bin").is_file():
        return None
    state = torch_load_tensors(directory / "pytorch_model.bin", "PyTorch weights file")
    if not isinstance(state, dict):
        raise ValueError(f"{directory / 'pytorch_model.bin'}: not a state dict")
    out = directory / "model.safetensors"
    # clone: tied weights share storage, which safetensors refuses
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(out), metadata={"format": "pt"})
    return out


def _check_model_folder(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder not found: {directory}")
    for required in ("config.json", "preprocessor_config.json"):
        if not (directory / required).is_file():
            raise ValueError(f"{directory}: no {required} (a Hugging Face model folder has config.json, "
                             "preprocessor_config.json and the weights)")


def import_model(directory: str | os.PathLike, name: str | None = None) -> tuple[str, dict]:
    """Record the hashes of a model folder copied from another machine and add it to the index."""
    directory = Path(directory).expanduser()
    _check_model_folder(directory)
    convert_pickled_weights(directory)
    record = record_hashes(directory, source=f"import {directory}")
    name = name or directory.name
    _register(name, directory)
    return name, record


def fetch_model(name_or_repo: str, revision: str | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Download a catalogue model (or any ``owner/name`` repo) into the Hugging Face cache and record
    the SHA-256 of its files. Network failures are one ValueError line."""
    entry = CATALOG.get(name_or_repo)
    if entry is not None and entry.repo is None:
        raise ValueError(f"{name_or_repo} has no transformers checkpoint on the Hugging Face hub; convert "
                         "the Mask2Former model-zoo weights and use `csl-ros models import DIR`")
    repo, rev = parse_hf_spec(entry.repo if entry else name_or_repo)
    revision = revision or rev
    # optional dependency (the hf extra, with transformers): only fetching needs it
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        directory = Path(snapshot_download(repo, revision=revision,
                                           allow_patterns=["*.json", "*.safetensors", "*.md"]))
        if not any(directory.glob("*.safetensors")):
            hf_hub_download(repo, "pytorch_model.bin", revision=revision)
    except Exception as exc:  # connection, DNS, HTTP, offline mode: the user's network to fix
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(f"cannot fetch {repo} from the Hugging Face hub ({type(exc).__name__}: {text}); "
                         "check the network, or copy the model folder from a connected machine and run "
                         "`csl-ros models import DIR`") from None
    convert_pickled_weights(directory)
    record = record_hashes(directory, source=f"hf:{repo}@{directory.name}")
    _register(entry.name if entry else repo, directory)
    return directory, record


def load_hf_model(source: str, device, allow_download: bool = False) -> HFSegmenter:
    """:func:`~csl_ros.teachers.hf.load_hf_segmenter`; with ``allow_download`` an ``hf:`` model is
    fetched first as ``csl-ros models fetch`` does (its hashes recorded on arrival)."""
    if allow_download and str(source).startswith(HF_PREFIX):
        source, _ = fetch_model(str(source)[len(HF_PREFIX):], progress=False)
    return load_hf_segmenter(source, device)


def installed() -> dict[str, Path]:
    """Models of the index (fetched or imported): name → folder."""
    return {k: Path(v) for k, v in read_index().items()}


def verify_model(name_or_dir: str) -> tuple[Path, dict]:
    """Re-check the hashes of an installed model (by index name) or a folder."""
    index = read_index()
    directory = Path(index[name_or_dir]) if name_or_dir in index else Path(name_or_dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{name_or_dir}: neither an installed model ({', '.join(sorted(index)) or 'none'}) "
                                "nor a folder")
    if not (directory / HASH_RECORD).is_file() and (directory / PICKLE_WEIGHTS[0]).is_file():
        raise ValueError(f"{directory}: pickled weights without a hash record; run `csl-ros models import`")
    return directory, verify_hashes(directory)
