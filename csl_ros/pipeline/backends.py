"""Inference backends for the networks: eager PyTorch, TorchScript (frozen) and torch-tensorrt.

A backend wraps an ``nn.Module`` whose forward maps one float image batch to a tuple of tensors.
Compiled artefacts are cached on disk, keyed by model hash, input size, precision and library
version. Any failure of a compiled backend falls back to eager with one clear warning: a missing
torch-tensorrt or a TensorRT build error must never take the node down.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger("csl_ros.backend")

BACKENDS = ("auto", "eager", "torchscript", "tensorrt")


def tensorrt_available() -> bool:
    try:
        import torch_tensorrt  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available()


@dataclass
class CompiledModel:
    """A callable network plus what it is."""

    fn: Callable[[torch.Tensor], tuple]
    backend: str
    device: torch.device
    channels_last: bool
    fp16: bool
    fallback_reason: str | None = None

    def __call__(self, x: torch.Tensor) -> tuple:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast("cuda", dtype=torch.float16) if self.fp16 and self.backend == "eager"
               else contextlib.nullcontext())
        with torch.inference_mode(), ctx:
            out = self.fn(x.half() if self.fp16 and self.backend == "tensorrt" else x)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return tuple(o.float() if torch.is_tensor(o) else o for o in out)


def _cache_path(cache_dir: str, model_hash: str, shape, precision: str, kind: str, version: str) -> Path:
    d = Path(os.path.expanduser(cache_dir))
    d.mkdir(parents=True, exist_ok=True)
    h, w = shape[-2:]
    return d / f"{kind}_{model_hash[:16]}_{shape[0]}x{h}x{w}_{precision}_{version}.{'ts' if kind == 'torchscript' else 'ep'}"


def _torchscript(module, example, path: Path, force: bool):
    # Shape-to-int conversions in the trace are intended: the engine is built for one input size.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)
        if path.is_file() and not force:
            log.info("loading cached TorchScript module %s", path)
            traced = torch.jit.load(str(path), map_location=example.device)
        else:
            traced = torch.jit.trace(module, example, check_trace=False, strict=False)
            # The trace is cached, not the frozen module: frozen + optimised graphs do not survive
            # a save/load round trip ("required keyword attribute 'value' is undefined").
            torch.jit.save(traced, str(path))
        # freeze + optimize_for_inference folds BatchNorm into convolutions (and, on CPU, picks
        # MKLDNN-friendly layouts): the CPU speed-up comes from here.
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def _tensorrt(module, example, path: Path, force: bool):
    import torch_tensorrt  # optional: the tensorrt extra

    if path.is_file() and not force:
        log.info("loading cached TensorRT engine %s", path)
        return torch_tensorrt.load(str(path)).module()
    log.warning("building a TensorRT fp16 engine for input %s; this can take several minutes "
                "(cached afterwards in %s)", tuple(example.shape), path.parent)
    trt = torch_tensorrt.compile(module, ir="dynamo", inputs=[example.half()],
                                 enabled_precisions={torch.half}, truncate_double=True)
    torch_tensorrt.save(trt, str(path), inputs=[example.half()])
    return trt


def compile_network(module: torch.nn.Module, example: torch.Tensor, *, backend: str = "auto",
                    device: torch.device, precision: str = "fp32", cache_dir: str = "~/.cache/csl_ros/engines",
                    model_hash: str = "nohash", force_rebuild: bool = False) -> CompiledModel:
    """Prepare ``module`` for inference on ``device`` with the requested backend (or the best one).

    ``auto``: TensorRT fp16 when torch-tensorrt and a GPU are present, else eager (channels-last
    memory on CPU; faster than frozen TorchScript there, see docs/performance.md).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    module = module.eval().to(device)
    fp16 = precision == "fp16" and device.type == "cuda"
    channels_last = device.type == "cpu"
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    example = example.to(device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    # auto: measured in bench/pipeline.py (docs/performance.md), frozen TorchScript was slower than
    # eager + channels-last on CPU, so it is never picked automatically.
    order = {"auto": (["tensorrt"] if device.type == "cuda" else []) + ["eager"],
             "tensorrt": ["tensorrt", "eager"], "torchscript": ["torchscript", "eager"],
             "eager": ["eager"]}[backend]
    reasons = []
    for kind in order:
        try:
            if kind == "eager":
                fn = module
            elif kind == "torchscript":
                path = _cache_path(cache_dir, model_hash, example.shape, "fp32", kind,
                                   f"torch{torch.__version__.split('+')[0]}{'_cl' if channels_last else ''}")
                fn = _torchscript(module, example, path, force_rebuild)
            else:
                if device.type != "cuda":
                    raise RuntimeError("TensorRT needs a CUDA device")
                import tensorrt  # optional: comes with torch-tensorrt
                import torch_tensorrt  # noqa: F401  (ImportError -> fallback below)

                # Engines are specific to the GPU architecture as well as to TensorRT's version.
                major, minor = torch.cuda.get_device_capability(device)
                path = _cache_path(cache_dir, model_hash, example.shape, "fp16", kind,
                                   f"trt{tensorrt.__version__}_sm{major}{minor}")
                # A half copy: the float module must stay intact for the eager fallback.
                fn = _tensorrt(copy.deepcopy(module).half(), example, path, force_rebuild)
            compiled = CompiledModel(fn, kind, device, channels_last and kind != "tensorrt",
                                     fp16 or kind == "tensorrt")
            compiled(example)  # a failing compiled artefact must fail here, not on the first frame
            if reasons:
                compiled.fallback_reason = "; ".join(reasons)
                if backend != "auto":
                    log.warning("backend %r unavailable (%s); using %s", backend, compiled.fallback_reason, kind)
            return compiled
        except Exception as exc:  # noqa: BLE001 - any backend failure falls back, with the reason kept
            reasons.append(f"{kind}: {type(exc).__name__}: {exc}".splitlines()[0][:300])
    raise RuntimeError("no inference backend works: " + "; ".join(reasons))
