"""Integrity of the weight files csl_ros writes and reads.

Every checkpoint csl_ros writes (students, segmenter teachers) embeds ``weights_sha256``: the SHA-256
over (name, dtype, shape, bytes) of every stored tensor in key order, in the safetensors header
metadata (or the ``.pt`` dict). Every load recomputes it over the tensors it read and refuses a
mismatch, naming the file, so one flipped byte in the weights never gives silently wrong scores.

``torch.load`` runs with ``weights_only=True`` only (no pickled Python object is ever executed), and
a file it cannot read that way (a pickle of objects, JSON, text, a truncated file) gets our message
instead of PyTorch's advice to disable that protection.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from typing import Any, Mapping

import torch

WEIGHTS_SHA256 = "weights_sha256"  # metadata key of the embedded hash


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a whole file (the digest manifests and statistics files record): one helper for
    every model file csl_ros writes or checks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every tensor in key order: detects any change of
    the stored weights, independent of the container format."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verify_weights(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], stored: str | None,
                   what: str) -> None:
    """Refuse ``state_dict`` read from ``path`` unless it hashes to the embedded ``stored`` SHA-256.
    A csl_ros ``what`` checkpoint without one was not written by this csl_ros: refused too."""
    if not stored:
        raise ValueError(f"{path}: {what} checkpoint without an embedded {WEIGHTS_SHA256} (written by an older "
                         "csl_ros?): its weights cannot be verified; re-save it with this version")
    if weights_sha256(state_dict) != stored:
        raise ValueError(f"{path}: the weights do not match the SHA-256 stored in the file "
                         "(modified or corrupted checkpoint)")


def torch_load_tensors(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` with our own message for a file that is not a
    tensor-only PyTorch file (``what`` names the expected kind of file)."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = type(exc).__name__
        raise ValueError(f"{path}: not a readable {what}: neither a safetensors file nor a tensor-only PyTorch "
                         f"file ({kind}); csl_ros never unpickles Python objects from weight files") from None
