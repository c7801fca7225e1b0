"""The one training loop (student and segmenter): DDP, AdamW with a poly schedule (optional linear
warm-up), AMP, gradient clipping, resumable checkpoints, a tqdm bar with loss and throughput, and a CSV
log.

A *task* supplies the model-specific parts (see :class:`TrainTask`): building one worker's batch for
a step (a pure function of (seed, step, rank), so no RNG state is checkpointed) and the loss of a
batch. Before each step the torch generators are seeded from (seed, step, rank) as well, so the
point sampling of the losses is reproducible, and a resumed run computes exactly the step the
uninterrupted run would have computed.

Checkpoint (``<out_dir>/last.pt`` and ``<out_dir>/checkpoints/step_NNNNNNN.pt``): model, optimiser,
scheduler and AMP-scaler state, the number of completed steps and the training config, read back
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from csl_ros.model.integrity import WEIGHTS_SHA256, torch_load_tensors, verify_weights, weights_sha256

from .distributed import DistEnv, all_reduce_mean, barrier, step_seed

CHECKPOINT_FORMAT = "csl_ros.train_state"


class TrainTask(Protocol):
    """What the loop needs from a model-specific trainer."""

    def make_batch(self, step: int) -> Any:
        """This worker's batch of ``step`` (pure function of the config seed, step and rank)."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss to back-propagate, scalar tensors to log, averaged across workers by the loop)."""

    def batch_images(self, batch: Any) -> int:
        """Number of images in this worker's batch (for the throughput)."""


class _StepBatches(torch.utils.data.Dataset):
    """``ds[step]`` = the task's batch of that step; lets a DataLoader prefetch in worker processes."""

    def __init__(self, task: TrainTask):
        self.task = task

    def __len__(self) -> int:  # pragma: no cover - indexed by the step sampler only
        return 2 ** 62

    def __getitem__(self, step: int):
        return self.task.make_batch(step)


def poly_scheduler(optimizer: torch.optim.Optimizer, max_steps: int, power: float, warmup_steps: int = 0
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """lr = base_lr * (1 - step / max_steps) ** power (detectron2 WarmupPolyLR without warm-up); with
    ``warmup_steps`` > 0, base_lr * (step + 1) / warmup_steps during the warm-up first."""
    if warmup_steps <= 0:
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=max_steps, power=power)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1.0 - step / max_steps) ** power

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainSummary:
    steps_run: int                    # steps run in this call
    final_step: int                   # completed steps after this call
    wall_s: float
    last_loss: float | None           # mean loss over the last logging window
    losses: list = field(default_factory=list)   # (step, mean loss across workers) per step run here
    checkpoint: Path | None = None


class Trainer:
    """Runs a :class:`TrainTask` with the recipe (``optim``, ``run``, ``data.workers``) of a
    :class:`~csl_ros.training.config.TrainConfig`. ``record``: the configuration written to
    ``config.yaml`` and into the checkpoints (default ``cfg``; the segmenter records its own)."""

    def __init__(self, cfg, env: DistEnv, model: nn.Module, param_groups: list[dict], task: TrainTask,
                 out_dir: str | os.PathLike, name: str = "train", record=None):
        self.cfg, self.env, self.task, self.name = cfg, env, task, name
        self.record = record if record is not None else cfg
        self.out_dir = Path(out_dir)
        self.model = model.to(env.device)
        if env.is_distributed:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.ddp: nn.Module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.ddp = self.model
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(param_groups, lr=o.lr, weight_decay=o.weight_decay)
        self.scheduler = poly_scheduler(self.optimizer, o.max_steps, o.poly_power, o.warmup_steps)
        self.use_amp = bool(o.amp) and env.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.step = 0

    # --- checkpoints ------------------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    def state_dict(self) -> dict:
        model = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return {"format": CHECKPOINT_FORMAT, "step": self.step, "name": self.name,
                "model": model, WEIGHTS_SHA256: weights_sha256(model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "config": self.record.to_dict(),
                "world_size": self.env.world_size}

    def save(self) -> Path | None:
        """Write the resumable checkpoint (rank 0 only); returns its path there."""
        if not self.env.is_main:
            return None
        ckpt_dir = self.out_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = ckpt_dir / f"step_{self.step:07d}.pt"
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)
        tmp_last = self.last_path.with_name("last.pt.tmp")
        torch.save(self.state_dict(), tmp_last)
        os.replace(tmp_last, self.last_path)
        keep = self.cfg.run.keep_checkpoints
        for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
            old.unlink()
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint written by :meth:`save` (``weights_only=True``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training checkpoint not found: {path}")
        state = torch_load_tensors(path, "csl_ros training checkpoint")
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: not a csl_ros training checkpoint")
        verify_weights(path, state.get("model") or {}, state.get(WEIGHTS_SHA256), "training")
        if state.get("name") != self.name:
            raise ValueError(f"{path}: checkpoint of a {state.get('name')!r} run, this is a {self.name!r} run")
        stored, current = state.get("config") or {}, self.record.to_dict()
        for key in getattr(self.task, "resume_keys", ()):  # settings a run cannot change midway
            if stored.get(key) != current.get(key):
                raise ValueError(f"{path}: checkpoint has {key}={stored.get(key)!r}, the config says "
                                 f"{current.get(key)!r}; use another out_dir or start afresh")
        try:
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise ValueError(f"{path}: model weights do not fit this model ({str(exc)[:300]})") from None
        if missing or unexpected:
            raise ValueError(f"{path}: model weights do not fit (missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}); was it trained with another model config?")
        # PolynomialLR stores its horizon: resumed under another max_steps it would keep the old
        # schedule (lr 0 past its end) without a word, so that is refused
        old_end, new_end = (state["scheduler"] or {}).get("total_iters"), getattr(self.scheduler, "total_iters", None)
        if old_end is not None and new_end is not None and old_end != new_end:
            raise ValueError(f"{path}: its learning-rate schedule ends at step {old_end}, this run's at {new_end}; "
                             f"resuming would keep the old schedule. Keep the max steps, or start a new out_dir "
                             f"from its weights (init_from)")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    # --- the loop ---------------------------------------------------------------------------------
    def _loader(self, start: int, end: int):
        workers = self.cfg.data.workers
        if workers == 0:
            return (self.task.make_batch(s) for s in range(start, end))
        return iter(torch.utils.data.DataLoader(_StepBatches(self.task), batch_size=None,
                                                sampler=range(start, end), num_workers=workers,
                                                prefetch_factor=2, collate_fn=lambda b: b))

    def train_step(self, batch) -> dict[str, float]:
        """One optimisation step on this worker's batch; returns the worker-averaged logs."""
        cfg, env = self.cfg, self.env
        torch.manual_seed(step_seed(cfg.run.seed, self.step, env.rank))
        self.ddp.train()
        with torch.autocast(env.device.type, dtype=torch.float16, enabled=self.use_amp):
            loss, logs = self.task.loss(self.ddp, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        grad_norm = None
        if cfg.optim.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            # Mask2Former's "full_model" clipping: one norm over every parameter.
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        names = ["loss"] + sorted(logs)
        values = torch.stack([loss.detach().float().reshape(())] +
                             [logs[k].detach().float().reshape(()).to(loss.device) for k in sorted(logs)])
        values = all_reduce_mean(values, env).cpu().tolist()
        out = dict(zip(names, values))
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        return out

    def run(self, resume: str | os.PathLike | bool = True, stop_at_step: int | None = None) -> TrainSummary:
        """Train to ``optim.max_steps`` (or ``stop_at_step``), resuming from ``resume`` (a path, or
        True for ``<out_dir>/last.pt`` when it exists)."""
        cfg, env = self.cfg, self.env
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume is True:
            if self.last_path.is_file():
                self.load(self.last_path)
        elif resume:
            self.load(resume)
        start = self.step
        end = cfg.optim.max_steps if stop_at_step is None else min(cfg.optim.max_steps, stop_at_step)
        log_path = self.out_dir / "log.csv"
        writer = log_fh = None
        bar = None
        if env.is_main:
            self.record.save(self.out_dir / "config.yaml")
            if start == 0 and log_path.exists():
                log_path.unlink()  # a fresh run starts a fresh log
            new = not log_path.exists()
            log_fh = open(log_path, "a", newline="")
            writer = csv.writer(log_fh)
            if new:
                writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s", "extra"])

            bar = tqdm(total=cfg.optim.max_steps, initial=start, desc=self.name, unit="step",
                       disable=not cfg.run.progress, dynamic_ncols=True)
        t0 = time.time()
        window: list[dict[str, float]] = []
        window_t, window_images = time.time(), 0
        losses: list[tuple[int, float]] = []
        last_loss = None
        checkpoint = None
        try:
            for batch in self._loader(start, end):
                logs = self.train_step(batch)
                losses.append((self.step, logs["loss"]))
                window.append(logs)
                window_images += self.task.batch_images(batch) * env.world_size
                if bar is not None:
                    bar.update(1)
                if self.step % cfg.run.log_every == 0 or self.step == end:
                    now = time.time()
                    mean = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[0]}
                    ips = window_images / max(now - window_t, 1e-9)
                    last_loss = mean["loss"]
                    if writer is not None:
                        extra = " ".join(f"{k}={v:.4g}" for k, v in mean.items() if k != "loss")
                        writer.writerow([self.step, f"{mean['loss']:.5f}",
                                         f"{self.optimizer.param_groups[0]['lr']:.4e}", f"{ips:.2f}",
                                         f"{now - t0:.1f}", extra])
                        log_fh.flush()
                        bar.set_postfix(loss=f"{mean['loss']:.3f}", img_s=f"{ips:.2f}")
                    window, window_t, window_images = [], now, 0
                if self.step % cfg.run.checkpoint_every == 0 or self.step == end:
                    checkpoint = self.save() or checkpoint
                    barrier(env)
        finally:
            if bar is not None:
                bar.close()
            if log_fh is not None:
                log_fh.close()
        if not math.isfinite(last_loss if last_loss is not None else 0.0):
            raise FloatingPointError("training diverged")
        return TrainSummary(steps_run=self.step - start, final_step=self.step, wall_s=time.time() - t0,
                            last_loss=last_loss, losses=losses, checkpoint=checkpoint)
