"""Inference backends for the networks: eager PyTorch, TorchScript (frozen), ``torch.compile``,
ONNX Runtime and torch-tensorrt.

A backend wraps an ``nn.Module`` whose forward maps one image batch to a tensor or a tuple of tensors
(the CSL student, the teacher's closed-set segmenter). Compiled artefacts are cached on disk, keyed by
model hash, input size, precision and library version; a cached ONNX file is checked against the
SHA-256 recorded beside it when it was written. Any failure of a compiled backend falls back to eager
with one clear warning: a missing onnxruntime / torch-tensorrt, an export or a build error must never
take the node down.

* ``onnxruntime``: the module exported to ONNX (opset 17), run by an ONNX Runtime session with the
  TensorRT, CUDA or CPU execution provider, the first that this onnxruntime build has for the device.
* ``compile``: ``torch.compile`` (inductor, weights frozen as constants); on CUDA with CUDA graphs.
* ``auto``: per device, the backends in ``AUTO_BACKENDS`` order: the fastest that bench/pipeline.py
  measured on that kind of device (docs/performance.md), then eager.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from csl_ros.model.integrity import sha256_file, weights_sha256

log = logging.getLogger("csl_ros.backend")

BACKENDS = ("auto", "eager", "torchscript", "compile", "onnxruntime", "tensorrt")
# What ``auto`` tries, in order, per device type. CPU: ONNX Runtime was the fastest backend for the
# shipped default's student and teacher in bench/pipeline.py (docs/performance.md). CUDA: not measured
# yet (no GPU machine has run bench/gpu_suite.py), so the order is TensorRT, when installed, then eager.
AUTO_BACKENDS = {"cpu": ("onnxruntime", "eager"), "cuda": ("tensorrt", "eager")}
ONNX_OPSET = 17


def onnxruntime_providers(device: torch.device) -> list[str]:
    """The ONNX Runtime execution providers to use on ``device``, best first ([] without onnxruntime)."""
    try:
        import onnxruntime as ort
    except Exception:
        return []
    have = ort.get_available_providers()
    wanted = (["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device.type == "cuda" else []) + [
        "CPUExecutionProvider"]
    return [p for p in wanted if p in have]


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
    detail: str = ""  # e.g. the ONNX Runtime execution provider, "CUDA graphs"

    def describe(self) -> str:
        """``backend`` plus what it runs on, e.g. ``onnxruntime (CPUExecutionProvider)``."""
        return f"{self.backend} ({self.detail})" if self.detail else self.backend

    def __call__(self, x: torch.Tensor) -> tuple:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (torch.autocast("cuda", dtype=torch.float16) if self.fp16 and self.backend in ("eager", "compile")
               else contextlib.nullcontext())
        with torch.inference_mode(), ctx:
            out = self.fn(_half_if_float(x) if self.backend == "tensorrt" else x)
        if isinstance(out, torch.Tensor):
            out = (out,)
        return tuple(o.float() if torch.is_tensor(o) else o for o in out)


def _cache_path(cache_dir: str, model_hash: str, shape, precision: str, kind: str, version: str) -> Path:
    d = Path(os.path.expanduser(cache_dir))
    d.mkdir(parents=True, exist_ok=True)
    h, w = shape[-2:]
    ext = {"torchscript": "ts", "onnxruntime": "onnx"}.get(kind, "ep")
    return d / f"{kind}_{model_hash[:16]}_{shape[0]}x{h}x{w}_{precision}_{version}.{ext}"


def module_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's class name and its parameters and buffers (names, dtypes, shapes, bytes):
    the cache key of a network that was not loaded from a file."""
    return hashlib.sha256(f"{type(module).__qualname__}|{weights_sha256(module.state_dict())}".encode()).hexdigest()


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


def _export_onnx(module, example, path: Path, force: bool) -> None:
    """Export ``module`` to ``path`` unless a cached copy matches the SHA-256 written beside it."""
    digest = path.with_name(path.name + ".sha256")
    if path.is_file() and not force:
        if digest.is_file() and digest.read_text().strip() == sha256_file(path):
            log.info("loading cached ONNX model %s", path)
            return
        log.warning("cached ONNX model %s does not match its recorded SHA-256; exporting it again", path)
    n_out = len(_as_tuple(module(example)))
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    # The TorchScript-based exporter: no onnxscript needed, and the graph is for one input size.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(tmp), input_names=["images"],
                          output_names=[f"out{i}" for i in range(n_out)], opset_version=ONNX_OPSET,
                          dynamo=False)
    tmp.replace(path)
    digest.write_text(sha256_file(path) + "\n")


class OrtRunner:
    """An ONNX Runtime session called like the module it was exported from (torch in, torch out).

    On a CUDA execution provider, input and outputs stay on the GPU (I/O binding on torch memory)."""

    _NUMPY = {torch.float32: np.float32, torch.float16: np.float16, torch.uint8: np.uint8}

    def __init__(self, path: Path, device: torch.device, fp16: bool, cache_dir: Path):
        import onnxruntime as ort  # optional: onnxruntime_providers() says when it is missing

        providers = onnxruntime_providers(device)
        if not providers:
            raise RuntimeError("onnxruntime is not installed")
        options = []
        for p in providers:
            if p == "TensorrtExecutionProvider":
                options.append({"device_id": device.index or 0, "trt_fp16_enable": fp16,
                                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)})
            elif p == "CUDAExecutionProvider":
                options.append({"device_id": device.index or 0})
            else:
                options.append({})
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = torch.get_num_threads()
        # Like OMP_WAIT_POLICY=PASSIVE for torch: spinning worker threads make every process on a
        # shared or busy CPU (the teacher and the student alternate) several times slower.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), so, providers=providers, provider_options=options)
        self.provider = self.session.get_providers()[0]
        self.device = device
        self.input = self.session.get_inputs()[0]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._on_gpu = device.type == "cuda" and self.provider != "CPUExecutionProvider"

    def __call__(self, x: torch.Tensor) -> tuple:
        x = x.contiguous()
        if not self._on_gpu:
            outs = self.session.run(self.outputs, {self.input.name: x.cpu().numpy()})
            return tuple(torch.from_numpy(o).to(self.device) for o in outs)
        binding = self.session.io_binding()
        binding.bind_input(self.input.name, "cuda", self.device.index or 0, self._NUMPY[x.dtype],
                           tuple(x.shape), x.data_ptr())
        for name in self.outputs:
            binding.bind_output(name, "cuda", self.device.index or 0)
        self.session.run_with_iobinding(binding)
        return tuple(torch.from_numpy(np.asarray(o)).to(self.device) for o in binding.copy_outputs_to_cpu())


def _half_if_float(x: torch.Tensor) -> torch.Tensor:
    return x.half() if x.is_floating_point() else x


def _as_tuple(out) -> tuple:
    return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def _torch_compile(module, device: torch.device):
    """``torch.compile`` with inductor; weights frozen into the graph (constant folding, prepacked
    CPU convolution weights). On CUDA the compiled graph is replayed as a CUDA graph, whose output
    buffers are reused by the next replay: the outputs are cloned."""
    options = {"freezing": True}
    if device.type != "cuda":
        return torch.compile(module, dynamic=False, options=options)
    options["triton.cudagraphs"] = True
    compiled = torch.compile(module, dynamic=False, options=options)

    def run(x):
        torch.compiler.cudagraph_mark_step_begin()
        return tuple(o.clone() for o in _as_tuple(compiled(x)))

    return run


def _tensorrt(module, example, path: Path, force: bool):
    import torch_tensorrt  # optional: the tensorrt extra

    if path.is_file() and not force:
        log.info("loading cached TensorRT engine %s", path)
        return torch_tensorrt.load(str(path)).module()
    log.warning("building a TensorRT fp16 engine for input %s; this can take several minutes "
                "(cached afterwards in %s)", tuple(example.shape), path.parent)
    example = _half_if_float(example)  # uint8 images (the teacher's input) stay uint8
    trt = torch_tensorrt.compile(module, ir="dynamo", inputs=[example],
                                 enabled_precisions={torch.half}, truncate_double=True)
    torch_tensorrt.save(trt, str(path), inputs=[example])
    return trt


def compile_network(module: torch.nn.Module, example: torch.Tensor, *, backend: str = "auto",
                    device: torch.device, precision: str = "fp32", cache_dir: str = "~/.cache/csl_ros/engines",
                    model_hash: str = "", force_rebuild: bool = False) -> CompiledModel:
    """Prepare ``module`` for inference on ``device`` with the requested backend (or the best one).

    ``auto`` tries ``AUTO_BACKENDS[device.type]`` in order (measured fastest first, eager last); any
    other backend falls back to eager, with the reason kept in ``fallback_reason``. ``model_hash``
    keys the on-disk cache (empty: hashed from the module's weights).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}")
    module = module.eval().to(device)
    weights_key = model_hash

    def cache_key() -> str:
        # hashed only by the backends that cache a file: eager and compile never pay for it
        nonlocal weights_key
        weights_key = weights_key or module_sha256(module)
        return weights_key

    fp16 = precision == "fp16" and device.type == "cuda"
    channels_last = device.type == "cpu"
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    example = example.to(device)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    order = list(AUTO_BACKENDS.get(device.type, ("eager",))) if backend == "auto" else (
        [backend] + (["eager"] if backend != "eager" else []))
    reasons = []
    for kind in order:
        try:
            detail = ""
            if kind == "eager":
                fn = module
            elif kind == "torchscript":
                path = _cache_path(cache_dir, cache_key(), example.shape, "fp32", kind,
                                   f"torch{torch.__version__.split('+')[0]}{'_cl' if channels_last else ''}")
                fn = _torchscript(module, example, path, force_rebuild)
            elif kind == "compile":
                fn = _torch_compile(module, device)
                detail = "inductor, CUDA graphs" if device.type == "cuda" else "inductor"
            elif kind == "onnxruntime":
                if not onnxruntime_providers(device):
                    raise RuntimeError("onnxruntime is not installed")
                path = _cache_path(cache_dir, cache_key(), example.shape, "fp32", kind,
                                   f"torch{torch.__version__.split('+')[0]}_opset{ONNX_OPSET}")
                _export_onnx(module, example.contiguous(), path, force_rebuild)
                fn = OrtRunner(path, device, fp16, path.parent)
                detail = fn.provider
            else:
                if device.type != "cuda":
                    raise RuntimeError("TensorRT needs a CUDA device")
                import tensorrt  # optional: comes with torch-tensorrt
                import torch_tensorrt  # noqa: F401  (ImportError -> fallback below)

                # Engines are specific to the GPU architecture as well as to TensorRT's version.
                major, minor = torch.cuda.get_device_capability(device)
                path = _cache_path(cache_dir, cache_key(), example.shape, "fp16", kind,
                                   f"trt{tensorrt.__version__}_sm{major}{minor}")
                # A half copy: the float module must stay intact for the eager fallback.
                fn = _tensorrt(copy.deepcopy(module).half(), example, path, force_rebuild)
            compiled = CompiledModel(fn, kind, device, channels_last and kind not in ("tensorrt", "onnxruntime"),
                                     fp16 or kind == "tensorrt", detail=detail)
            compiled(example)  # a failing compiled artefact must fail here, not on the first frame
            if reasons:
                compiled.fallback_reason = "; ".join(reasons)
                if backend != "auto":
                    log.warning("backend %r unavailable (%s); using %s", backend, compiled.fallback_reason, kind)
            return compiled
        except Exception as exc:  # noqa: BLE001 - any backend failure falls back, with the reason kept
            reasons.append(f"{kind}: {type(exc).__name__}: {exc}".splitlines()[0][:300])
    raise RuntimeError("no inference backend works: " + "; ".join(reasons))
