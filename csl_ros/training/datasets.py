"""Training data sources: ``ds[i]`` -> (H x W x 3 uint8 RGB image, H x W uint8 Cityscapes trainIds,
255 void). Only in-distribution data: no OOD object is ever used for training (as in the paper).

* :class:`SynthroadFrames`: synthroad frames rendered with ``obstacles="none"`` for seeds
  ``first_seed .. first_seed + frames - 1`` (and any ``extra_seeds`` after them), rendered once and
  kept as PNG pairs in a cache folder (``~/.cache/csl_ros/synthroad/<H>x<W>/`` by default; never part
  of the repository), so the segmenter, the students and the statistics fit all read the same frames
  without re-rendering.
* :class:`RecordFrames`: any registered dataset with semantic labels (``csl_ros.data.registry``), e.g.
  :class:`CityscapesFrames`, the real Cityscapes layout through :class:`csl_ros.data.loaders.Cityscapes`
  (``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` + ``gtFine/..._gtFine_labelTrainIds.png``).
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from csl_ros.data.loaders import open_dataset
from csl_ros.data.registry import DATASETS
from csl_ros.data.synthroad import rare_road_paint_seeds, render_frame

DEFAULT_CACHE = Path(os.path.expanduser("~/.cache/csl_ros/synthroad"))


def _write_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    if not cv2.imwrite(str(tmp), array):
        raise OSError(f"cannot write {tmp}")
    os.replace(tmp, path)  # a killed render never leaves a half-written frame under the real name


class SynthroadFrames:
    """In-distribution synthroad frames with a PNG cache (module docstring)."""

    def __init__(self, first_seed: int = 0, frames: int = 1000, size: tuple[int, int] = (256, 512),
                 cache_dir: str | os.PathLike | None = None, extra_seeds=()):
        if frames < 1:
            raise ValueError(f"synthroad: frames must be >= 1, got {frames}")
        self.first_seed, self.size = int(first_seed), (int(size[0]), int(size[1]))
        self.extra_seeds = [int(s) for s in extra_seeds]
        self.seeds = list(range(self.first_seed, self.first_seed + int(frames))) + self.extra_seeds
        self.frames = len(self.seeds)
        base = Path(cache_dir) if cache_dir else DEFAULT_CACHE
        self.cache_dir = base / f"{self.size[0]}x{self.size[1]}"

    def __len__(self) -> int:
        return self.frames

    def _paths(self, seed: int) -> tuple[Path, Path]:
        return (self.cache_dir / f"{seed:08d}_image.png", self.cache_dir / f"{seed:08d}_trainIds.png")

    def render(self, seed: int) -> tuple[np.ndarray, np.ndarray]:
        frame = render_frame(seed, size=self.size, obstacles="none")
        return frame.image, frame.train_ids

    def seed_of(self, i: int) -> int:
        """The seed of frame ``i``; IndexError outside 0..frames-1."""
        if not 0 <= i < self.frames:
            raise IndexError(f"synthroad frame {i} out of range 0..{self.frames - 1}")
        return self.seeds[i]

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        seed = self.seed_of(i)
        image_path, label_path = self._paths(seed)
        if image_path.is_file() and label_path.is_file():
            image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
            labels = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
            if image is not None and labels is not None:
                return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), labels
        image, labels = self.render(seed)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        _write_png(image_path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        _write_png(label_path, labels.astype(np.uint8))
        return image, labels

    def missing(self) -> list[int]:
        """Indices of the frames not in the cache yet (what :meth:`prepare` renders)."""
        return [i for i in range(self.frames) if not all(p.is_file() for p in self._paths(self.seeds[i]))]

    def prepare(self, progress: bool = True) -> int:
        """Render every frame not yet in the cache; returns how many were rendered."""
        todo = self.missing()
        if todo:
            for i in tqdm(todo, desc=f"render synthroad {self.size[0]}x{self.size[1]}", unit="frame",
                          disable=not progress):
                self[i]
        return len(todo)

    def describe(self) -> str:
        extra = f" + {len(self.extra_seeds)} other seeds" if self.extra_seeds else ""
        last = self.first_seed + self.frames - len(self.extra_seeds) - 1
        return (f"synthroad obstacles=none seeds {self.first_seed}..{last}{extra} at {self.size[0]}x{self.size[1]}")


class RecordFrames:
    """The (image, trainIds) pairs of a registered dataset with semantic labels (``semantic`` in
    :data:`csl_ros.data.registry.DATASETS`; e.g. Cityscapes fine annotations of one split)."""

    def __init__(self, name: str, root: str | os.PathLike, split: str = "train"):
        entry = DATASETS.entry(name)
        if not entry.semantic:
            raise ValueError(f"dataset {name} has no semantic (trainIds) labels to train on; choose one "
                             f"of {', '.join(DATASETS.names(semantic=True))}")
        self._ds = open_dataset(name, root, **({"split": split} if "split" in entry.options else {}))
        self.name, self.root, self.split = name, Path(root), split
        self.title = entry.help or name

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        record = self._ds[i]
        if record.semantic is None:
            raise ValueError(f"{self.name} frame {record.frame_id} has no semantic labels")
        return record.rgb, record.semantic

    def prepare(self, progress: bool = True) -> int:
        return 0

    def describe(self) -> str:
        return f"{self.title} {self.split} ({len(self)} frames) under {self.root}"


class CityscapesFrames(RecordFrames):
    """Cityscapes fine annotations (trainIds) of one split."""

    def __init__(self, root: str | os.PathLike, split: str = "train"):
        super().__init__("cityscapes", root, split)


def build_dataset(data_cfg) -> SynthroadFrames | RecordFrames:
    """The training source of a :class:`~csl_ros.training.config.DataConfig`: synthroad frames
    rendered without obstacles and cached, or any registered dataset with semantic labels."""
    if data_cfg.dataset == "synthroad":  # ID-only renders with a PNG cache, not the loader's drive
        extra = rare_road_paint_seeds(data_cfg.rare_paint_first_seed, data_cfg.rare_paint_frames)
        return SynthroadFrames(data_cfg.synth_seed, data_cfg.synth_frames,
                               (data_cfg.synth_height, data_cfg.synth_width), data_cfg.root or None,
                               extra_seeds=extra)
    return RecordFrames(data_cfg.dataset, data_cfg.root, data_cfg.split)
