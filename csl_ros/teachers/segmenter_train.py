"""Training loop of the closed-set segmenter (the base of the logit teachers) on synthroad.

``train_segmenter(SegmenterTrainConfig(...))``: cross-entropy over Cityscapes trainIds
(``ignore_index=255``), AdamW (no weight decay on norms and biases), poly learning-rate schedule
with optional linear warm-up, random scale + crop, horizontal flips and colour jitter, gradient
clipping, AMP on CUDA, a tqdm progress bar with loss and throughput, a CSV log, resumable checkpoints
(model, optimiser, schedule, AMP scaler and every random state, so a resumed run continues exactly
as an uninterrupted one on CPU), and at the end the segmenter checkpoint (``segmenter.safetensors``)
plus, optionally, mIoU on held-out validation seeds.

Only in-distribution frames are used (synthroad ``obstacles="none"``): no OOD data is ever used for
training, as in the paper. Randomness comes from a ``torch.Generator`` seeded by the config.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from csl_ros.model.integrity import WEIGHTS_SHA256, torch_load_tensors, verify_weights, weights_sha256
from csl_ros.teachers.segmenter import (CITYSCAPES_CLASSES, ClosedSetSegmenter, preset,
                                        save_segmenter)

IGNORE_INDEX = 255


@dataclass
class SegmenterTrainConfig:
    """Everything a segmenter training run depends on (stored in its checkpoints)."""

    out_dir: str = "runs/segmenter"
    preset: str = "lraspp_mobilenet_v3_large"
    num_classes: int = CITYSCAPES_CLASSES
    # data: synthroad seeds [first_seed, first_seed + frames), rendered once at render_size
    first_seed: int = 0
    frames: int = 400
    render_size: tuple = (256, 512)
    cache_frames: bool = True
    # augmentation
    crop_size: tuple = (256, 512)
    scale_range: tuple = (0.75, 1.5)
    hflip: bool = True
    color_jitter: float = 0.3          # brightness/contrast/saturation factors in [1−j, 1+j]
    # optimisation
    steps: int = 2000
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 1.0      # 0.1 when fine-tuning a pretrained trunk; 1 from scratch
    poly_power: float = 0.9
    warmup_steps: int = 50
    grad_clip: float = 1.0             # max gradient norm; 0 disables
    aux_weight: float = 0.5            # torchvision aux head loss weight (aux_loss presets only)
    amp: bool = True                   # mixed precision on CUDA only
    device: str = "auto"
    num_threads: int = 0               # torch CPU threads; 0 keeps torch's default
    seed: int = 0
    # bookkeeping
    log_every: int = 10
    checkpoint_every: int = 200
    resume: bool = True
    save_dtype: str = "float16"        # final segmenter file: float16 or float32
    val_first_seed: int = 1_000_000
    val_frames: int = 0                # > 0: mIoU on these synthroad seeds at the end
    progress: bool = True

    def validate(self) -> None:
        errors = []
        if self.steps < 1:
            errors.append(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            errors.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.frames < 1:
            errors.append(f"frames must be >= 1, got {self.frames}")
        if not self.lr > 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 32:
            errors.append(f"crop_size must be (H, W) with both >= 32, got {self.crop_size}")
        if len(self.render_size) != 2 or min(self.render_size) < 32:
            errors.append(f"render_size must be (H, W) with both >= 32, got {self.render_size}")
        if not (0 < self.scale_range[0] <= self.scale_range[1]):
            errors.append(f"scale_range must be 0 < lo <= hi, got {self.scale_range}")
        if not 0 <= self.color_jitter < 1:
            errors.append(f"color_jitter must be in [0, 1), got {self.color_jitter}")
        if self.save_dtype not in ("float16", "float32"):
            errors.append(f"save_dtype must be float16 or float32, got {self.save_dtype!r}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            errors.append("checkpoint_every and log_every must be >= 1")
        if errors:
            raise ValueError("invalid segmenter training config: " + "; ".join(errors))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainResult:
    segmenter_path: Path | None   # None when the run stopped early (stop_at_step)
    checkpoint_path: Path
    log_path: Path
    losses: list = field(default_factory=list)   # (step, loss) of the steps run in this call
    miou: float | None = None
    per_class_iou: list | None = None


class SynthroadSegmentation:
    """synthroad frames without obstacles: ``ds[i]`` → (H×W×3 uint8 RGB, H×W uint8 trainIds)."""

    def __init__(self, first_seed: int, frames: int, size: tuple, cache: bool = True):
        from csl_ros.data.synthroad import render_frame

        self._render = render_frame
        self.first_seed, self.frames, self.size, self.cache = first_seed, frames, tuple(size), cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.frames

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= i < self.frames:
            raise IndexError(i)
        if i in self._cache:
            return self._cache[i]
        f = self._render(self.first_seed + i, size=self.size, obstacles="none")
        item = (f.image, f.train_ids)
        if self.cache:
            self._cache[i] = item
        return item


# --------------------------------------------------------------------------------------------------
# augmentation (torch, driven by one generator)
# --------------------------------------------------------------------------------------------------

def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def augment(image: np.ndarray, label: np.ndarray, cfg: SegmenterTrainConfig, gen: torch.Generator,
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, crop (padding with void where needed), flip and colour jitter.

    Returns (3×h×w float in [0, 1], h×w int64 trainIds with 255 void)."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    lab = torch.from_numpy(np.ascontiguousarray(label)).long()
    h, w = lab.shape
    s = _uniform(gen, *cfg.scale_range)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) != (h, w):
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False,
                            antialias=s < 1)[0].clamp_(0, 1)
        lab = F.interpolate(lab[None, None].float(), size=(nh, nw), mode="nearest")[0, 0].long()
    ch, cw = cfg.crop_size
    ph, pw = max(0, ch - nh), max(0, cw - nw)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
        lab = F.pad(lab, (0, pw, 0, ph), value=IGNORE_INDEX)
    y0 = int(torch.randint(0, img.shape[1] - ch + 1, (), generator=gen))
    x0 = int(torch.randint(0, img.shape[2] - cw + 1, (), generator=gen))
    img, lab = img[:, y0:y0 + ch, x0:x0 + cw], lab[y0:y0 + ch, x0:x0 + cw]
    if cfg.hflip and float(torch.rand((), generator=gen)) < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    j = cfg.color_jitter
    if j > 0:
        img = img * _uniform(gen, 1 - j, 1 + j)                                   # brightness
        mean = (img * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0).mean()
        img = (img - mean) * _uniform(gen, 1 - j, 1 + j) + mean                   # contrast
        grey = (img * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        img = (img - grey) * _uniform(gen, 1 - j, 1 + j) + grey                   # saturation
        img = img.clamp(0, 1)
    return img.contiguous(), lab.contiguous()


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_miou(model: ClosedSetSegmenter, dataset, device: str | torch.device = "cpu",
                  batch_size: int = 4) -> tuple[float, list[float]]:
    """Mean IoU over the classes present (in labels or predictions) of ``dataset`` (ignoring 255).

    Returns (mIoU, per-class IoU with NaN for classes absent from both)."""
    k = model.num_classes
    conf = torch.zeros(k, k, dtype=torch.int64)
    model.eval()
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im, _ in items])
        y = torch.stack([torch.from_numpy(np.ascontiguousarray(lb)).long() for _, lb in items])
        pred = model(x.to(device)).argmax(1).cpu()
        valid = y != IGNORE_INDEX
        conf += torch.bincount(y[valid] * k + pred[valid], minlength=k * k).view(k, k)
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = ~torch.isnan(iou)
    miou = float(iou[present].mean()) if bool(present.any()) else float("nan")
    return miou, iou.tolist()


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------

def _param_groups(model: ClosedSetSegmenter, cfg: SegmenterTrainConfig) -> list[dict]:
    groups = {}
    for name, p in model.net.named_parameters():
        if not p.requires_grad:
            continue
        backbone = name.startswith("backbone.")
        decay = p.dim() > 1
        key = (backbone, decay)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "lr": cfg.lr * (cfg.backbone_lr_mult if bb else 1.0),
             "weight_decay": cfg.weight_decay if decay else 0.0}
            for (bb, decay), ps in sorted(groups.items())]


def _lr_factor(step: int, cfg: SegmenterTrainConfig) -> float:
    """Linear warm-up then poly decay ``(1 − t/T)^power`` (step counts from 0)."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return max(0.0, 1.0 - step / cfg.steps) ** cfg.poly_power


def _resolve_device(name: str) -> torch.device:
    from csl_ros.teachers.teacher import resolve_device

    return resolve_device(name)


def train_segmenter(cfg: SegmenterTrainConfig, dataset=None, val_dataset=None,
                    stop_at_step: int | None = None) -> TrainResult:
    """Train (or resume) a closed-set segmenter; see the module docstring.

    ``stop_at_step`` ends this call early (after saving a checkpoint) as an interruption would; a
    later call with ``resume=True`` continues the same schedule.

    ``dataset``/``val_dataset``: any indexable of (H×W×3 uint8 RGB, H×W uint8 trainIds); default
    synthroad frames from the config. Checkpoint: ``<out_dir>/last.pt``; log: ``<out_dir>/log.csv``;
    result: ``<out_dir>/segmenter.safetensors`` (+ ``metrics.json`` when validating).
    """
    cfg.validate()
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    device = _resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "last.pt", out / "log.csv"
    if dataset is None:
        dataset = SynthroadSegmentation(cfg.first_seed, cfg.frames, cfg.render_size, cfg.cache_frames)
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")

    torch.manual_seed(cfg.seed)  # weight init and dropout
    model = ClosedSetSegmenter(preset(cfg.preset, num_classes=cfg.num_classes)).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if cfg.resume and ckpt_path.is_file():
        ck = torch_load_tensors(ckpt_path, "segmenter training checkpoint")
        verify_weights(ckpt_path, ck.get("model") or {}, ck.get(WEIGHTS_SHA256), "segmenter training")
        for key in ("preset", "num_classes"):
            if ck["train_config"].get(key) != getattr(cfg, key):
                raise ValueError(f"{ckpt_path}: checkpoint has {key}={ck['train_config'].get(key)!r}, "
                                 f"the config says {getattr(cfg, key)!r}; use another out_dir or "
                                 "resume=False")
        model.net.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        start = int(ck["step"])
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log

    def save_checkpoint(step: int) -> None:
        tmp = ckpt_path.with_name(ckpt_path.name + ".tmp")
        weights = model.net.state_dict()
        torch.save({"model": weights, WEIGHTS_SHA256: weights_sha256(weights), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "step": step,
                    "train_config": cfg.to_dict(), "segmenter_config": model.config.to_dict()}, tmp)
        os.replace(tmp, ckpt_path)

    from tqdm import tqdm

    new_log = not log_path.exists()
    log_fh = open(log_path, "a", newline="")
    writer = csv.writer(log_fh)
    if new_log:
        writer.writerow(["step", "loss", "lr", "images_per_s", "elapsed_s"])
    losses: list[tuple[int, float]] = []
    bar = tqdm(total=cfg.steps, initial=start, desc="segmenter", unit="step", disable=not cfg.progress)
    t0 = time.time()
    window_loss, window_n, window_t = 0.0, 0, time.time()
    model.train()
    try:
        end = cfg.steps if stop_at_step is None else min(cfg.steps, stop_at_step)
        for step in range(start, end):
            factor = _lr_factor(step, cfg)
            for g, base in zip(optimizer.param_groups, base_lrs):
                g["lr"] = base * factor
            idx = torch.randint(0, len(dataset), (cfg.batch_size,), generator=gen).tolist()
            pairs = [augment(*dataset[i], cfg, gen) for i in idx]
            x = torch.stack([p[0] for p in pairs]).to(device)
            y = torch.stack([p[1] for p in pairs]).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits, aux = model(x, with_aux=True)
                loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
                if aux is not None and cfg.aux_weight > 0:
                    loss = loss + cfg.aux_weight * F.cross_entropy(aux.float(), y, ignore_index=IGNORE_INDEX)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss)} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            value = float(loss.detach())
            losses.append((step, value))
            window_loss, window_n = window_loss + value, window_n + 1
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                now = time.time()
                ips = window_n * cfg.batch_size / max(now - window_t, 1e-9)
                writer.writerow([done, f"{window_loss / window_n:.5f}", f"{optimizer.param_groups[-1]['lr']:.3e}",
                                 f"{ips:.2f}", f"{now - t0:.1f}"])
                log_fh.flush()
                bar.set_postfix(loss=f"{window_loss / window_n:.3f}", img_s=f"{ips:.1f}")
                window_loss, window_n, window_t = 0.0, 0, now
            if done % cfg.checkpoint_every == 0 or done == end:
                save_checkpoint(done)
    finally:
        bar.close()
        log_fh.close()

    model.eval()
    if stop_at_step is not None and stop_at_step < cfg.steps:
        return TrainResult(segmenter_path=None, checkpoint_path=ckpt_path, log_path=log_path,
                           losses=losses)
    seg_path = save_segmenter(model, out / "segmenter.safetensors",
                              dtype=torch.float16 if cfg.save_dtype == "float16" else None)
    result = TrainResult(segmenter_path=seg_path, checkpoint_path=ckpt_path, log_path=log_path,
                         losses=losses)
    if val_dataset is None and cfg.val_frames > 0:
        val_dataset = SynthroadSegmentation(cfg.val_first_seed, cfg.val_frames, cfg.render_size, cache=False)
    if val_dataset is not None:
        result.miou, result.per_class_iou = evaluate_miou(model, val_dataset, device)
        metrics = {"miou": result.miou, "per_class_iou": [None if math.isnan(v) else v
                                                          for v in result.per_class_iou],
                   "val_frames": len(val_dataset), "steps": cfg.steps, "config": cfg.to_dict()}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return result
