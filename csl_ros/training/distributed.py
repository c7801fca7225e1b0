"""Multi-process training through ``torchrun``: process-group setup from its environment variables,
DistributedSampler-style sharding of a deterministic index stream, and cross-worker averaging.

``torchrun --nproc_per_node N -m csl_ros train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; a plain ``csl-ros train ...`` is a world of one and never touches
``torch.distributed``. Backend: nccl on GPU, gloo on CPU.

The index stream is a pure function of (seed, step): step s of a run with global batch G reads the
positions s*G .. s*G+G-1 of an endless sequence of per-epoch permutations (epoch e is permuted with
seed (seed, e)); worker r takes positions r, r+W, r+2W, ... of that slice, as
``torch.utils.data.DistributedSampler`` interleaves. Nothing about the data order needs saving in a
checkpoint, and a resumed run reads exactly the samples the uninterrupted run would have read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from csl_ros.model.device import resolve_device


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the (possibly single-process) training world."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto") -> DistEnv:
    """Read the torchrun variables; with WORLD_SIZE > 1 initialise the process group (nccl on GPU,
    gloo on CPU). ``device``: auto / cpu / cuda; under torchrun ``cuda`` means cuda:LOCAL_RANK."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a tensor over all workers (a detached copy; the input is unchanged)."""
    out = value.detach().clone()
    if env.is_distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= env.world_size
    return out


def barrier(env: DistEnv) -> None:
    if env.is_distributed:
        dist.barrier()


def per_worker_batch(global_batch: int, env: DistEnv) -> int:
    if global_batch % env.world_size:
        raise ValueError(f"the global batch size {global_batch} is not divisible by the "
                         f"{env.world_size} workers")
    return global_batch // env.world_size


def step_indices(num_samples: int, step: int, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1) -> list[int]:
    """Dataset indices that worker ``rank`` reads at ``step`` (module docstring)."""
    if num_samples < 1:
        raise ValueError("the training set is empty")
    start = step * global_batch
    positions = range(start + rank, start + global_batch, world_size)
    out = []
    cache: dict[int, np.ndarray] = {}
    for p in positions:
        epoch, offset = divmod(p, num_samples)
        if epoch not in cache:
            cache[epoch] = np.random.default_rng([seed, epoch]).permutation(num_samples)
        out.append(int(cache[epoch][offset]))
    return out


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for the torch / numpy generators of one worker at one step."""
    return int(np.random.default_rng([seed, step, rank, 0x5EED]).integers(0, 2 ** 63 - 1))
