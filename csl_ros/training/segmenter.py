"""The closed-set segmenter (the base of the logit teachers) as a task of the one trainer.

``train_segmenter(SegmenterTrainConfig(...))``: cross-entropy over Cityscapes trainIds
(``ignore_index=255``), AdamW (no weight decay on norms and biases), poly learning-rate schedule
with optional linear warm-up, random scale + crop, horizontal flips and colour jitter, gradient
clipping, AMP on CUDA, a tqdm progress bar, a CSV log and resumable checkpoints: all of it the
student's :class:`~csl_ros.training.loop.Trainer`, with :class:`SegmenterTask` supplying the batches
and the loss. At the end the segmenter checkpoint (``segmenter.safetensors``) plus, optionally, mIoU
on held-out validation seeds.

Only in-distribution frames are used (synthroad ``obstacles="none"``): no OOD data is ever used for
training, as in the paper. With ``negatives_max > 0`` the run is outlier exposure with synthetic
negatives cut from the same in-distribution frames (:mod:`csl_ros.training.negatives`), usually as a
fine-tuning (``init_from``) of a trained segmenter. Each step's batch (frame indices, augmentation,
negatives) is a pure function of (seed, step, rank), as the student's, so a resumed run continues
exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from csl_ros.data.synthroad import rare_road_paint_seeds
from csl_ros.model.device import resolve_device
from csl_ros.settings import setting, validation_errors
from csl_ros.teachers.segmenter import (CITYSCAPES_CLASSES, ClosedSetSegmenter, load_segmenter, preset,
                                        save_segmenter)

from .config import DATASET_REGISTRY
from .config import DATASETS as TRAIN_DATASETS
from .config import (AVOID_ROAD_PAINT_HELP, COLOUR_SATURATION, COLOUR_VALUE, EXCLUDE_SOURCE_ROAD_HELP, NEGATIVE_ASPECT,
                     NEGATIVE_SHADOW_HELP, NEGATIVE_SIZE, RARE_PAINT_FIRST_SEED, RARE_PAINT_HELP, RARE_PAINT_SEED_HELP, DataConfig, OptimConfig, RunConfig,
                     TrainConfig)
from .datasets import RecordFrames, SynthroadFrames
from .distributed import DistEnv, per_worker_batch, step_seed
from .loop import Trainer
from .negatives import ROAD_TRAIN_ID, paste_negatives, road_paint_mask, uniform_cross_entropy

IGNORE_INDEX = 255
# road paint's pixels between the paint mask and the augmented crop: an id no trainId uses, back to road
# after the crop (nearest resizing and flips keep it where the paint is)
PAINT_LABEL = 254


@dataclass
class SegmenterTrainConfig:
    """Everything a segmenter training run depends on (stored in its checkpoints). Flat keys for
    ``csl-ros train segmenter --set key=value`` (``csl_ros.settings``)."""

    out_dir: str = setting("runs/segmenter", "checkpoints, log and the segmenter go here")
    preset: str = setting("lraspp_mobilenet_v3_large", "segmenter preset (csl_ros.teachers.segmenter.PRESETS)")
    num_classes: int = setting(CITYSCAPES_CLASSES, "classes of the segmenter (Cityscapes trainIds: 19)",
                               range=(2, 1000))
    # data: a dataset with trainIds (the training config's DATASETS); synthroad: seeds
    # [first_seed, first_seed + frames), rendered once at render_size; cityscapes: gtFine of split
    dataset: str = setting("synthroad", "training data: synthroad, or cityscapes (with root)",
                           choices=TRAIN_DATASETS)
    root: str = setting("", "cityscapes: dataset folder (leftImg8bit/, gtFine/)")
    split: str = setting("train", "cityscapes: training split")
    val_split: str = setting("", "cityscapes: mIoU on this split at the end (e.g. val); empty: none")
    first_seed: int = setting(0, "first synthroad seed", range=(0, 2**31 - 1))
    frames: int = setting(400, "synthroad training frames", range=(1, 2**31 - 1))
    rare_paint_frames: int = setting(0, RARE_PAINT_HELP, range=(0, 2**31 - 1))
    rare_paint_first_seed: int = setting(RARE_PAINT_FIRST_SEED, RARE_PAINT_SEED_HELP, range=(0, 2**31 - 1))
    render_size: tuple = setting((256, 512), "synthroad render size HxW")
    cache_frames: bool = setting(True, "keep rendered frames (on disk through csl-ros train segmenter)")
    # augmentation
    crop_size: tuple = setting((256, 512), "training crop HxW (void padding where larger)")
    scale_range: tuple = setting((0.75, 1.5), "random resize factors lo,hi")
    hflip: bool = setting(True, "random horizontal flip (p = 0.5)")
    color_jitter: float = setting(0.3, "brightness/contrast/saturation factors in [1-j, 1+j]", range=(0.0, 0.999))
    # outlier exposure with synthetic negatives (csl_ros.training.negatives); 0 = the plain closed-set model
    negatives_max: int = setting(0, "synthetic negatives (patches of other training frames) pasted on the "
                                 "road of each crop: 0..N at random; 0 disables outlier exposure", range=(0, 64))
    negative_size: tuple = setting(NEGATIVE_SIZE, "negative height as a fraction of the crop height lo,hi "
                                   "(log-uniform)")
    negative_aspect: tuple = setting(NEGATIVE_ASPECT, "negative width / height range lo,hi (log-uniform); "
                                     "above 2 adds flat objects lying on the road")
    negative_colour_fraction: float = setting(0.0, "share of the negatives that are synthetic colour fields "
                                              "(a random colour, shading and low-frequency noise) instead of "
                                              "patches of training frames", range=(0.0, 1.0))
    negative_road_colour_fraction: float = setting(0.0, "share of the negatives that are colour fields in the "
                                                   "crop's own road colour under another illumination "
                                                   "(asphalt-coloured debris)", range=(0.0, 1.0))
    negative_colour_saturation: tuple = setting(COLOUR_SATURATION, "saturation range lo,hi of the colour "
                                                "fields' colours (0 = grey)")
    negative_colour_value: tuple = setting(COLOUR_VALUE, "HSV value (brightness) range lo,hi of the colour "
                                           "fields' colours (0 = black)")
    negative_exclude_source_road: bool = setting(False, EXCLUDE_SOURCE_ROAD_HELP)
    negative_avoid_road_paint: bool = setting(False, AVOID_ROAD_PAINT_HELP)
    negative_shadow: bool = setting(False, NEGATIVE_SHADOW_HELP)
    negative_weight: float = setting(1.0, "weight of the entropy maximisation on negative pixels (Chan et al. "
                                     "2021) against the cross-entropy on the rest", range=(0.0, math.inf))
    ohem_threshold: float = setting(0.0, "online hard example mining (the OhemCrossEntropy of the HRNet/OCR "
                                    "Cityscapes recipes): the cross-entropy averages only the pixels whose "
                                    "true-class probability is below this (at least ohem_min_kept of them, "
                                    "the hardest); 0 = plain mean over all labelled pixels", range=(0.0, 1.0))
    ohem_min_kept: float = setting(1 / 16, "with ohem_threshold: the share of a batch's labelled pixels kept "
                                   "at least (the hardest)", range=(0.0, 1.0))
    road_paint_weight: float = setting(1.0, "cross-entropy weight of the road pixels whose colour is road paint "
                                       "(lane markings, zebra stripes; csl_ros.training.negatives.road_paint_mask) "
                                       "against 1 for the other labelled pixels: they are a few percent of "
                                       "the road, and outlier exposure makes them look anomalous",
                                       range=(0.0, math.inf))
    init_from: str = setting("", "segmenter checkpoint to start from (fine-tuning, e.g. outlier exposure "
                             "of a trained model); empty: random initialisation")
    # optimisation
    steps: int = setting(2000, "optimisation steps", range=(1, 2**31 - 1))
    batch_size: int = setting(4, "images per step", range=(1, 2**31 - 1))
    lr: float = setting(1e-3, "AdamW learning rate (> 0)")
    weight_decay: float = setting(1e-4, "AdamW weight decay (0 on norms and biases)", range=(0.0, math.inf))
    backbone_lr_mult: float = setting(1.0, "backbone lr factor: 0.1 when fine-tuning a pretrained trunk, 1 "
                                      "from scratch", range=(0.0, math.inf))
    poly_power: float = setting(0.9, "poly schedule power", range=(0.0, math.inf))
    warmup_steps: int = setting(50, "linear warm-up steps", range=(0, 2**31 - 1))
    grad_clip: float = setting(1.0, "max gradient norm; 0 disables", range=(0.0, math.inf))
    aux_weight: float = setting(0.5, "torchvision aux head loss weight (aux_loss presets only)",
                                range=(0.0, math.inf))
    amp: bool = setting(True, "mixed precision (on CUDA only)")
    device: str = setting("auto", "auto, cpu, cuda, cuda:N (checked when the run starts)")
    num_threads: int = setting(0, "torch CPU threads; 0 keeps torch's default", range=(0, 1024))
    seed: int = setting(0, "weight initialisation, data order and augmentation seed")
    # bookkeeping
    log_every: int = setting(10, "CSV log period in steps", range=(1, 2**31 - 1))
    checkpoint_every: int = setting(200, "resumable checkpoint period in steps", range=(1, 2**31 - 1))
    resume: bool = setting(True, "continue from <out_dir>/last.pt when it exists")
    save_dtype: str = setting("float16", "final segmenter file: float16 or float32", choices=("float16", "float32"))
    val_first_seed: int = setting(1_000_000, "first synthroad validation seed", range=(0, 2**31 - 1))
    val_frames: int = setting(0, "> 0: mIoU on these synthroad seeds at the end", range=(0, 2**31 - 1))
    progress: bool = setting(True, "tqdm progress bar")

    def validate(self) -> None:
        errors = validation_errors(self)
        if not self.lr > 0:
            errors.append(f"lr must be > 0, got {self.lr}")
        if len(self.crop_size) != 2 or min(self.crop_size) < 32:
            errors.append(f"crop_size must be (H, W) with both >= 32, got {self.crop_size}")
        if len(self.render_size) != 2 or min(self.render_size) < 32:
            errors.append(f"render_size must be (H, W) with both >= 32, got {self.render_size}")
        if DATASET_REGISTRY.entry(self.dataset).root and not self.root:
            errors.append(f"dataset {self.dataset} needs root (its dataset folder)")
        if not (0 < self.scale_range[0] <= self.scale_range[1]):
            errors.append(f"scale_range must be 0 < lo <= hi, got {self.scale_range}")
        if len(self.negative_size) != 2 or not (0 < self.negative_size[0] <= self.negative_size[1] <= 1):
            errors.append(f"negative_size must be 0 < lo <= hi <= 1, got {self.negative_size}")
        asp = self.negative_aspect
        if len(asp) != 2 or not (0 < asp[0] <= asp[1]):
            errors.append(f"negative_aspect must be 0 < lo <= hi, got {asp}")
        sat = self.negative_colour_saturation
        if len(sat) != 2 or not (0 <= sat[0] <= sat[1] <= 1):
            errors.append(f"negative_colour_saturation must be 0 <= lo <= hi <= 1, got {sat}")
        val = self.negative_colour_value
        if len(val) != 2 or not (0 <= val[0] <= val[1] <= 1):
            errors.append(f"negative_colour_value must be 0 <= lo <= hi <= 1, got {val}")
        if self.road_paint_weight != 1.0 and self.ohem_threshold > 0:
            errors.append("road_paint_weight and ohem_threshold do not combine (OHEM picks its own pixels)")
        default_min_kept = next(f.default for f in dataclasses.fields(self) if f.name == "ohem_min_kept")
        if self.ohem_min_kept != default_min_kept and not self.ohem_threshold > 0:
            # a setting that would be silently ignored: say so rather than train something else than asked
            errors.append(f"ohem_min_kept={self.ohem_min_kept:g} has no effect without ohem_threshold > 0")
        if errors:
            raise ValueError("invalid segmenter training config: " + "; ".join(errors))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def extra_seeds(self) -> list[int]:
        """Synthroad seeds trained on after [first_seed, first_seed + frames): the rare-paint frames."""
        return rare_road_paint_seeds(self.rare_paint_first_seed, self.rare_paint_frames)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")

    def recipe(self) -> TrainConfig:
        """The trainer's recipe (optimiser, schedule, bookkeeping) of this run."""
        return TrainConfig(
            data=DataConfig(workers=0),
            optim=OptimConfig(lr=self.lr, weight_decay=self.weight_decay, backbone_lr_multiplier=self.backbone_lr_mult,
                              poly_power=self.poly_power, warmup_steps=self.warmup_steps, clip_grad_norm=self.grad_clip,
                              amp=self.amp, max_steps=self.steps, batch_size=self.batch_size),
            run=RunConfig(out_dir=self.out_dir, seed=self.seed, device=self.device, log_every=self.log_every,
                          checkpoint_every=self.checkpoint_every, threads=self.num_threads, progress=self.progress))


@dataclass
class TrainResult:
    segmenter_path: Path | None   # None when the run stopped early (stop_at_step)
    checkpoint_path: Path
    log_path: Path
    losses: list = field(default_factory=list)   # (step, loss) of the steps run in this call
    miou: float | None = None
    per_class_iou: list | None = None


class SynthroadSegmentation(SynthroadFrames):
    """:class:`SynthroadFrames` (the same seeds, the same frames) kept in memory instead of the PNG cache:
    what ``train_segmenter`` renders when it is given no dataset (library use, tests; ``csl-ros train
    segmenter`` passes the on-disk frames). ``ds[i]`` → (H×W×3 uint8 RGB, H×W uint8 trainIds)."""

    def __init__(self, first_seed: int, frames: int, size: tuple, cache: bool = True, extra_seeds=()):
        super().__init__(first_seed, frames, size, extra_seeds=extra_seeds)
        self.cache = cache
        self._memory: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        seed = self.seed_of(i)
        if i in self._memory:
            return self._memory[i]
        item = self.render(seed)
        if self.cache:
            self._memory[i] = item
        return item

    def missing(self) -> list[int]:
        """Indices of the frames not in memory (the cache here; :meth:`prepare` renders them into it)."""
        return [i for i in range(self.frames) if i not in self._memory]


def segmenter_frames(cfg: SegmenterTrainConfig, cache_dir=None, in_memory: bool = False, validation: bool = False):
    """The training frames of ``cfg``, or with ``validation`` its validation frames (None when it has
    none). A registered dataset with trainIds: ``root`` at ``split`` (``val_split``). Synthroad: seeds
    ``first_seed..`` + the rare-paint seeds (``val_first_seed..``, ``val_frames`` of them) at
    ``render_size``, on the PNG cache under ``cache_dir`` (shared with the student trainer and
    fit-stats), or ``in_memory`` (training frames kept when ``cache_frames``, validation frames rendered
    at each read)."""
    if cfg.dataset != "synthroad":
        if validation and not cfg.val_split:
            return None
        return RecordFrames(cfg.dataset, cfg.root, cfg.val_split if validation else cfg.split)
    if validation and cfg.val_frames == 0:
        return None
    first, frames, extra = ((cfg.val_first_seed, cfg.val_frames, ()) if validation
                            else (cfg.first_seed, cfg.frames, cfg.extra_seeds()))
    if in_memory:
        return SynthroadSegmentation(first, frames, cfg.render_size, cfg.cache_frames and not validation,
                                     extra_seeds=extra)
    return SynthroadFrames(first, frames, cfg.render_size, cache_dir, extra_seeds=extra)


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


class SegmenterTask:
    """The segmenter's part of a :class:`~csl_ros.training.loop.Trainer` run: augmented batches of
    (image, trainIds) drawn from ``dataset`` and the cross-entropy loss (plus the aux head's)."""

    resume_keys = ("preset", "num_classes")  # a checkpoint of another architecture is refused

    def __init__(self, cfg: SegmenterTrainConfig, env: DistEnv, dataset):
        self.cfg, self.env, self.dataset = cfg, env, dataset
        self.batch_size = per_worker_batch(cfg.batch_size, env)

    def make_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images, trainIds, negative pixels, pixel weights): the pasted negatives' pixels are void in the
        trainIds; the weights are ``road_paint_weight`` on road paint, 1 elsewhere."""
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, step, self.env.rank))
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=gen).tolist()
        images, labels, outliers, weights = [], [], [], []
        weighted = self.cfg.road_paint_weight != 1.0
        for i in idx:
            image, label = self.dataset[i]
            if weighted:   # paint found on the frame's own colours, carried through the crop as a label
                label = np.where(road_paint_mask(image, label), PAINT_LABEL, label).astype(label.dtype)
            img, lab = augment(image, label, self.cfg, gen)
            paint = lab == PAINT_LABEL
            lab = lab.masked_fill(paint, ROAD_TRAIN_ID)
            count = int(torch.randint(0, self.cfg.negatives_max + 1, (), generator=gen)) \
                if self.cfg.negatives_max else 0
            out = paste_negatives(img, lab, self.dataset, gen, count, self.cfg.negative_size,
                                  colour_fraction=self.cfg.negative_colour_fraction,
                                  exclude_source_road=self.cfg.negative_exclude_source_road,
                                  avoid_road_paint=self.cfg.negative_avoid_road_paint,
                                  shadow=self.cfg.negative_shadow,
                                  colour_saturation=tuple(self.cfg.negative_colour_saturation),
                                  colour_value=tuple(self.cfg.negative_colour_value),
                                  aspect_range=tuple(self.cfg.negative_aspect),
                                  road_colour_fraction=self.cfg.negative_road_colour_fraction)
            images.append(img)
            labels.append(lab.masked_fill(out, IGNORE_INDEX))
            outliers.append(out)
            weights.append(torch.where(paint & ~out, self.cfg.road_paint_weight, 1.0))
        return torch.stack(images), torch.stack(labels), torch.stack(outliers), torch.stack(weights)

    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, y, outlier, weight = (t.to(self.env.device) for t in batch)
        logits, aux = model(x, with_aux=True)
        ce = self._cross_entropy(logits, y, weight)
        if aux is not None and self.cfg.aux_weight > 0:
            ce = ce + self.cfg.aux_weight * self._cross_entropy(aux, y, weight)
        if self.cfg.negatives_max == 0:
            return ce, {}
        neg = uniform_cross_entropy(logits, outlier)
        return ce + self.cfg.negative_weight * neg, {"ce": ce.detach(), "negatives": neg.detach()}

    def _cross_entropy(self, logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.cfg.ohem_threshold > 0:
            return ohem_cross_entropy(logits, y, self.cfg.ohem_threshold, self.cfg.ohem_min_kept)
        if self.cfg.road_paint_weight == 1.0:
            return F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
        return weighted_cross_entropy(logits, y, weight)

    def batch_images(self, batch) -> int:
        return int(batch[0].shape[0])


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a weight per pixel: ``sum(w * ce) / sum(w)`` over the labelled pixels (the plain
    mean when every weight is 1); 0 without labelled pixels. ``weight`` (B, H, W) like ``target``."""
    pixel_ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    w = weight.float() * (target != IGNORE_INDEX)
    if not bool(w.sum() > 0):
        return logits.sum() * 0.0
    return (pixel_ce * w).sum() / w.sum()


def ohem_cross_entropy(logits: torch.Tensor, target: torch.Tensor, threshold: float,
                       min_kept: float) -> torch.Tensor:
    """Cross-entropy averaged over the hard pixels only (online hard example mining, as HRNet/OCR's
    ``OhemCrossEntropy`` for Cityscapes): the labelled pixels whose true-class probability is below
    ``threshold``, and at least the ``min_kept`` share of the labelled pixels with the lowest
    probability. Why: thin in-distribution structures (lane markings, poles) are a tiny share of the
    pixels, so the plain mean barely sees them, and outlier exposure makes exactly them uncertain.
    ``logits`` (B, K, H, W), ``target`` (B, H, W) with ``IGNORE_INDEX`` void; 0 without labelled pixels."""
    pixel_ce = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none").flatten()
    labelled = target.flatten() != IGNORE_INDEX
    ce = pixel_ce[labelled]
    if ce.numel() == 0:
        return logits.sum() * 0.0
    # p_true = exp(-ce): the hardest pixels have the largest cross-entropy
    kept = max(1, min(ce.numel(), math.ceil(min_kept * ce.numel())))
    floor = torch.topk(ce.detach(), kept, sorted=True).values[-1]   # ce of the kept-th hardest pixel
    cut = floor.clamp(max=-math.log(threshold))   # every pixel with p_true < threshold, or the kept hardest
    return ce[ce.detach() >= cut].mean()


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
    env = DistEnv(device=resolve_device(cfg.device))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        dataset = segmenter_frames(cfg, in_memory=True)
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")

    torch.manual_seed(cfg.seed)  # weight initialisation
    model = ClosedSetSegmenter(preset(cfg.preset, num_classes=cfg.num_classes))
    if cfg.init_from:   # integrity-checked load; the architecture must be the configured one
        start = load_segmenter(cfg.init_from, expected_num_classes=cfg.num_classes)
        if start.config.arch != model.config.arch:
            raise ValueError(f"{cfg.init_from}: a {start.config.arch} segmenter, the run trains {model.config.arch}")
        model.net.load_state_dict({k: v.float() for k, v in start.net.state_dict().items()})
    trainer = Trainer(cfg.recipe(), env, model, _param_groups(model, cfg), SegmenterTask(cfg, env, dataset),
                      out, name="segmenter", record=cfg)
    summary = trainer.run(resume=cfg.resume, stop_at_step=stop_at_step)
    # (step index, loss) of the steps run in this call, steps counted from 0
    losses = [(step - 1, value) for step, value in summary.losses]
    result = TrainResult(segmenter_path=None, checkpoint_path=trainer.last_path, log_path=out / "log.csv",
                         losses=losses)
    model.eval()
    if trainer.step < cfg.steps:
        return result
    result.segmenter_path = save_segmenter(model, out / "segmenter.safetensors",
                                           dtype=torch.float16 if cfg.save_dtype == "float16" else None)
    if val_dataset is None:
        val_dataset = segmenter_frames(cfg, in_memory=True, validation=True)
    if val_dataset is not None:
        result.miou, result.per_class_iou = evaluate_miou(model, val_dataset, env.device)
        metrics = {"miou": result.miou, "per_class_iou": [None if math.isnan(v) else v
                                                          for v in result.per_class_iou],
                   "val_frames": len(val_dataset), "steps": cfg.steps, "config": cfg.to_dict()}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return result
