"""Training of the CSL student: class-agnostic region training (scheme "ca") and scheme 1 (plus the
distillation head D-hat and the Huber loss against a frozen teacher).

Per sample: augment (resize, crop, flip, colour jitter) -> mask split of the augmented trainId crop
(spec 1.1; K > N keeps the N largest components) -> targets. Loss (spec section 3):

    L = sum over the dec_layers + 1 predictions (2 L_v + 5 L_bce + 5 L_dice) + lambda_d L_d

with ``num_masks`` (the divisor of the region losses) averaged across workers as in Mask2Former, and
for scheme 1 ``L_d = Huber_delta(D-hat, D_teacher)``: the teacher (closed-set segmenter + score
function + global calibration, so D_teacher is in [0, 1], spec 4.4) runs frozen in eval mode without
gradients on the same augmented crop, and its map is averaged to D-hat's 1/4 resolution.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from csl_ros.model import (CSLStudent, LossConfig, SetCriterion, build_student, get_preset, load_checkpoint,
                           masks_from_components, optimizer_param_groups, read_checkpoint)
from csl_ros.model_settings import save_student
from csl_ros.teachers.teacher import build_teacher
from csl_ros.training.datasets import build_dataset

from .augment import AugmentParams, augment, split_targets
from .config import NEGATIVE_TRAIN_ID, TrainConfig
from .distributed import DistEnv, all_reduce_mean, per_worker_batch, step_indices
from .loop import Trainer, TrainSummary
from .negatives import paste_negatives

log = logging.getLogger(__name__)


def student_model_config(cfg: TrainConfig):
    """The preset with the scheme's head: C = 1 distillation channel for scheme 1, none for ca."""
    return get_preset(cfg.student.preset, distill_channels=1 if cfg.student.scheme == "1" else 0)


def init_student_from(model: CSLStudent, path: str) -> list[str]:
    """Copy every tensor of a student checkpoint whose name and shape match (e.g. a class-agnostic
    student into a scheme-1 one, whose distillation head then starts fresh). Returns the names of
    the model's tensors that were *not* initialised from the file."""
    _, state, _ = read_checkpoint(path)
    own = model.state_dict()
    usable = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"{path}: no tensor fits the student being trained (another preset?)")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


@dataclass
class StudentBatch:
    images: Tensor        # B x 3 x H x W uint8
    components: Tensor    # B x H x W int64, mask-split ids 0..K-1, -1 = no target
    counts: list          # K per image
    indices: list         # dataset indices (for debugging)


class StudentTask:
    """The student's part of the training loop (see :class:`~csl_ros.training.loop.TrainTask`)."""

    def __init__(self, cfg: TrainConfig, env: DistEnv, dataset, num_queries: int, teacher=None):
        self.cfg, self.env, self.dataset = cfg, env, dataset
        d = cfg.data
        self.params = AugmentParams(crop=(d.crop_height, d.crop_width), min_scale=d.min_scale,
                                    max_scale=d.max_scale, flip=d.flip, color_jitter=d.color_jitter,
                                    cat_max_ratio=d.cat_max_ratio)
        self.batch = per_worker_batch(cfg.optim.batch_size, env)
        self.num_queries = num_queries
        s = cfg.student
        self.criterion = SetCriterion(LossConfig(num_points=s.num_points, distill_weight=s.distill_weight,
                                                 huber_delta=s.huber_delta)).to(env.device)
        self.teacher = teacher

    def sample(self, step: int, position: int, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Augmented image, mask-split component map and K of one sample. The generator depends on
        (seed, step, global position in the step's batch) only."""
        rng = np.random.default_rng([self.cfg.run.seed, step, position])
        image, labels = self.dataset[index]
        image, labels = augment(image, labels, rng, self.params)
        if self.cfg.data.negatives_max:
            image, labels = self.paste_negative_regions(image, labels, rng)
        components, count = split_targets(labels, self.num_queries, self.cfg.data.min_component_area)
        return image, components, count

    def paste_negative_regions(self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
                               ) -> tuple[np.ndarray, np.ndarray]:
        """0..``negatives_max`` synthetic negatives (:func:`~csl_ros.training.negatives.paste_negatives`)
        pasted on the road of an augmented crop, their pixels labelled ``NEGATIVE_TRAIN_ID`` so that the
        mask split makes each a region of its own: the class-agnostic student learns that something
        on the road that is not road is a region, which the fusion (Eq. 3) needs to keep an obstacle's
        teacher score instead of averaging it into the road."""
        d = self.cfg.data
        count = int(rng.integers(0, d.negatives_max + 1))
        if count == 0:
            return image, labels
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        img = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        pasted = paste_negatives(img, torch.from_numpy(labels.astype(np.int64)), self.dataset, gen, count,
                                 (d.negative_min_size, d.negative_max_size),
                                 colour_fraction=d.negative_colour_fraction,
                                 exclude_source_road=d.negative_exclude_source_road,
                                 avoid_road_paint=d.negative_avoid_road_paint, shadow=d.negative_shadow,
                                 colour_saturation=(d.negative_min_saturation, d.negative_max_saturation),
                                 aspect_range=(d.negative_min_aspect, d.negative_max_aspect),
                                 road_colour_fraction=d.negative_road_colour_fraction).numpy()
        image = img.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        labels = labels.copy()
        labels[pasted] = NEGATIVE_TRAIN_ID
        return np.ascontiguousarray(image), labels

    def make_batch(self, step: int) -> StudentBatch:
        env, g = self.env, self.cfg.optim.batch_size
        indices = step_indices(len(self.dataset), step, g, self.cfg.run.seed, env.rank, env.world_size)
        positions = range(env.rank, g, env.world_size)
        items = [self.sample(step, p, i) for p, i in zip(positions, indices)]
        images = torch.from_numpy(np.stack([it[0] for it in items])).permute(0, 3, 1, 2).contiguous()
        comps = torch.from_numpy(np.stack([it[1] for it in items]))
        return StudentBatch(images, comps, [it[2] for it in items], list(indices))

    def batch_images(self, batch: StudentBatch) -> int:
        return int(batch.images.shape[0])

    @torch.no_grad()
    def teacher_map(self, images: Tensor) -> Tensor:
        """The frozen teacher's calibrated map D in [0, 1] at the crop resolution (B x 1 x H x W)."""
        out = self.teacher(images)
        return out.score_map.float().clone()  # a normal tensor (the teacher runs in inference mode)

    def loss(self, model: nn.Module, batch: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        device = self.env.device
        images = batch.images.to(device, non_blocking=True)
        comps = batch.components.to(device, non_blocking=True)
        targets = [masks_from_components(comps[b], batch.counts[b]) for b in range(len(batch.counts))]
        teacher = self.teacher_map(images) if self.teacher is not None else None
        outputs = model(images.float())
        losses = self.criterion(outputs, targets, teacher)
        # Mask2Former divides the region losses by the number of masks averaged over all workers;
        # the criterion used this worker's count, so rescale those terms.
        local = float(max(sum(batch.counts), 1))
        global_mean = max(float(all_reduce_mean(torch.tensor(float(sum(batch.counts))), self.env)), 1.0)
        c = self.criterion.config
        validity = sum(v for k, v in losses.items() if k.startswith("loss_validity"))
        region = sum(c.bce_weight * v for k, v in losses.items() if k.startswith("loss_bce")) + \
            sum(c.dice_weight * v for k, v in losses.items() if k.startswith("loss_dice"))
        total = c.validity_weight * validity + region * (local / global_mean)
        logs = {"validity": losses["loss_validity"], "bce": losses["loss_bce"], "dice": losses["loss_dice"],
                "num_masks": torch.tensor(local / len(batch.counts))}
        if "loss_distill" in losses:
            total = total + c.distill_weight * losses["loss_distill"]
            logs["distill"] = losses["loss_distill"]
        return total, logs


def build_teacher_for(cfg: TrainConfig, device):
    s = cfg.student
    return build_teacher(s.teacher, segmenter_path=s.teacher_path, stats_path=s.teacher_stats_path,
                         device=device)


def train_student(cfg: TrainConfig, env: DistEnv, dataset=None, resume=True, stop_at_step: int | None = None,
                  teacher=None) -> tuple[TrainSummary, Trainer]:
    """Train (or resume) a student as configured; rank 0 writes ``<out_dir>/student.safetensors``
    when ``max_steps`` is reached. ``teacher`` overrides the one the config names (scheme 1)."""
    cfg.validate()
    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)
    if dataset is None:
        dataset = build_dataset(cfg.data)
    model_cfg = student_model_config(cfg)
    torch.manual_seed(cfg.run.seed)  # weight initialisation (DDP broadcasts rank 0's anyway)
    model = build_student(model_cfg, cfg.student.backbone_weights or None)
    if cfg.student.init_from:
        fresh = init_student_from(model, cfg.student.init_from)
        if env.is_main:
            log.info("initialised from %s; fresh tensors: %s", cfg.student.init_from, fresh)
    if cfg.student.scheme == "1" and teacher is None:
        teacher = build_teacher_for(cfg, env.device)
    if cfg.student.scheme == "ca":
        teacher = None
    groups = optimizer_param_groups(model, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.backbone_lr_multiplier)
    task = StudentTask(cfg, env, dataset, model_cfg.num_queries, teacher)
    trainer = Trainer(cfg, env, model, groups, task, cfg.run.out_dir, name=f"student_{cfg.student.scheme}")
    summary = trainer.run(resume=resume, stop_at_step=stop_at_step)
    if env.is_main and trainer.step >= cfg.optim.max_steps:
        meta = {"scheme": cfg.student.scheme, "steps": trainer.step, "data": getattr(dataset, "describe", str)(),
                "final_loss": f"{summary.last_loss}"}
        if teacher is not None:
            meta["teacher"] = repr(teacher)
        save_student(Path(cfg.run.out_dir) / "student.safetensors", trainer.model.eval(), meta)
    return summary, trainer


def export_student(src: str | Path, dst: str | Path, storage: str = "float16", metadata: dict | None = None) -> str:
    """A copy of a student checkpoint stored as ``storage`` (float16 or int8 weights, for shipping;
    loading gives float32 back). Returns the new file's SHA-256."""
    loaded = load_checkpoint(src)
    meta = {k: v for k, v in loaded.metadata.items() if k != "stored_dtype"}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    return save_student(dst, loaded.model, meta, storage=storage)
