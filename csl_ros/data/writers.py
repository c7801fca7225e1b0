"""Writers for three real dataset layouts, with the real file naming, so the loaders of the real data
can be exercised on synthroad frames.

* Cityscapes: ``leftImg8bit/<split>/<city>/<city>_<seq:06d>_<frame:06d>_leftImg8bit.png``,
  ``gtFine/<split>/<city>/<stem>_gtFine_{labelIds,labelTrainIds,instanceIds}.png`` and
  ``camera/<split>/<city>/<stem>_camera.json``. instanceIds follow Cityscapes: labelId * 1000 + k for
  the instances of "thing" classes, the labelId elsewhere (16-bit PNG).
* SMIYC (SegmentMeIfYouCan): ``dataset_AnomalyTrack/images/<fid>.jpg`` +
  ``dataset_AnomalyTrack/labels_masks/<fid>_labels_semantic.png`` (fid ``<prefix><index:04d>``, e.g.
  ``validation0000``), and ``dataset_ObstacleTrack/images/<fid>.webp`` +
  ``dataset_ObstacleTrack/labels_masks/<fid>_labels_semantic.png`` (fid ``<scene>_<index:06d>``, the
  scene being ``fid.split('_')[0]``). Labels: 0 in-distribution / road, 1 anomaly / obstacle,
  255 void.
* LostAndFound: ``leftImg8bit/<split>/<NN>_<scene>/<NN>_<scene>_<seq:06d>_<frame:06d>_leftImg8bit.png``,
  ``gtCoarse/<split>/<dir>/<stem>_gtCoarse_labelIds.png`` (0 void, 1 free space = drivable road,
  2..200 obstacles; synthroad uses one id per obstacle kind, ``LAF_OBSTACLE_IDS``) and
  ``camera/<split>/<dir>/<stem>_camera.json`` (Cityscapes camera format).

Images are written as RGB content (OpenCV gets BGR); label PNGs are single-channel.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from .synthroad import Frame
from .synthroad.labels import ROAD, THING_TRAIN_IDS, TRAIN_TO_LABEL_ID, VOID, train_ids_to_label_ids

# LostAndFound label ids used for synthroad obstacle kinds (all inside the benchmark's 2..200
# "obstacle" range and outside its "non-hazard" ids 31, 33, 34, 36-39).
LAF_OBSTACLE_IDS = {"box": 2, "plank": 8, "cylinder": 12, "tyre": 16, "bag": 20, "polygon": 24}
LAF_FREE_SPACE = 1

# Regular expressions of the real file names (used by the tests; handy for loaders too).
CITYSCAPES_RE = re.compile(
    r"^(leftImg8bit|gtFine|camera)/(?P<split>[^/]+)/(?P<city>[a-z]+)/(?P=city)_(?P<seq>\d{6})_(?P<frame>\d{6})_"
    r"(leftImg8bit\.png|gtFine_labelIds\.png|gtFine_labelTrainIds\.png|gtFine_instanceIds\.png|camera\.json)$")
SMIYC_RE = re.compile(
    r"^(dataset_AnomalyTrack/(images/(?P<afid>[A-Za-z-]+\d{4})\.jpg|labels_masks/(?P<afid2>[A-Za-z-]+\d{4})_labels_semantic\.png)"
    r"|dataset_ObstacleTrack/(images/(?P<ofid>[A-Za-z-]+_\d+)\.webp|labels_masks/(?P<ofid2>[A-Za-z-]+_\d+)_labels_semantic\.png))$")
LAF_RE = re.compile(
    r"^(leftImg8bit|gtCoarse|camera)/(?P<split>[^/]+)/(?P<dir>\d{2}_[A-Za-z0-9_]+)/(?P=dir)_(?P<seq>\d{6})_(?P<frame>\d{6})_"
    r"(leftImg8bit\.png|gtCoarse_labelIds\.png|camera\.json)$")


def _check_name(value: str, what: str, pattern: str) -> str:
    if not re.fullmatch(pattern, value):
        raise ValueError(f"{what} {value!r} does not match the dataset naming ({pattern})")
    return value


def _imwrite(path: Path, img: np.ndarray, params=()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img, list(params)):
        raise OSError(f"could not write {path}")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def cityscapes_instance_ids(frame: Frame) -> np.ndarray:
    """Cityscapes ``instanceIds`` (uint16): labelId * 1000 + k per thing instance, labelId elsewhere,
    0 for void (OOD obstacles included)."""
    label_ids = train_ids_to_label_ids(frame.train_ids).astype(np.uint16)
    out = label_ids.copy()
    ids = frame.instance_ids
    things = np.isin(frame.train_ids, list(THING_TRAIN_IDS)) & (ids > 0)
    if things.any():
        counters: dict[int, int] = {}
        uniq = np.unique(ids[things])
        # each instance id maps to exactly one class; number instances per class in id order
        for uid in uniq.tolist():
            m = things & (ids == uid)
            tid = int(np.bincount(frame.train_ids[m]).argmax())
            k = counters.get(tid, 0)
            counters[tid] = k + 1
            out[m] = int(TRAIN_TO_LABEL_ID[tid]) * 1000 + k
    return out


class CityscapesWriter:
    """Writes frames into a Cityscapes tree (``root``/leftImg8bit, gtFine, camera)."""

    def __init__(self, root, split: str, city: str = "synthroad"):
        self.root = Path(root)
        self.split = _check_name(split, "split", r"[A-Za-z0-9_-]+")
        self.city = _check_name(city, "Cityscapes city", r"[a-z]+")

    def stem(self, seq: int, frame_no: int) -> str:
        return f"{self.city}_{int(seq):06d}_{int(frame_no):06d}"

    def write(self, frame: Frame, seq: int, frame_no: int = 19) -> dict[str, Path]:
        stem = self.stem(seq, frame_no)
        rel = Path(self.split) / self.city
        paths = {
            "image": self.root / "leftImg8bit" / rel / f"{stem}_leftImg8bit.png",
            "label_ids": self.root / "gtFine" / rel / f"{stem}_gtFine_labelIds.png",
            "train_ids": self.root / "gtFine" / rel / f"{stem}_gtFine_labelTrainIds.png",
            "instance_ids": self.root / "gtFine" / rel / f"{stem}_gtFine_instanceIds.png",
            "camera": self.root / "camera" / rel / f"{stem}_camera.json",
        }
        _imwrite(paths["image"], frame.image)
        _imwrite(paths["label_ids"], train_ids_to_label_ids(frame.train_ids))
        _imwrite(paths["train_ids"], frame.train_ids)
        _imwrite(paths["instance_ids"], cityscapes_instance_ids(frame))
        _write_json(paths["camera"], frame.camera.cityscapes_json())
        return paths


class SmiycWriter:
    """Writes frames into a SegmentMeIfYouCan track (``root``/dataset_AnomalyTrack or ObstacleTrack).

    ``track`` "anomaly": fids ``<prefix><index:04d>`` with .jpg images; "obstacle": fids
    ``<prefix>_<index:06d>`` (prefix = scene) with .webp images.
    """

    def __init__(self, root, track: str, prefix: str = "validation"):
        if track not in ("anomaly", "obstacle"):
            raise ValueError(f"SMIYC track must be 'anomaly' or 'obstacle', got {track!r}")
        self.root = Path(root)
        self.track = track
        self.prefix = _check_name(prefix, "SMIYC fid prefix", r"[A-Za-z-]+")
        self.dir = self.root / ("dataset_AnomalyTrack" if track == "anomaly" else "dataset_ObstacleTrack")

    def fid(self, index: int) -> str:
        return f"{self.prefix}{int(index):04d}" if self.track == "anomaly" else f"{self.prefix}_{int(index):06d}"

    def write(self, frame: Frame, index: int) -> dict[str, Path]:
        fid = self.fid(index)
        if self.track == "anomaly":
            image = self.dir / "images" / f"{fid}.jpg"
            _imwrite(image, frame.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        else:
            image = self.dir / "images" / f"{fid}.webp"
            _imwrite(image, frame.image, [cv2.IMWRITE_WEBP_QUALITY, 95])
        label = self.dir / "labels_masks" / f"{fid}_labels_semantic.png"
        _imwrite(label, frame.ood_labels)
        return {"image": image, "label": label}


def laf_label_ids(frame: Frame) -> np.ndarray:
    """LostAndFound ``gtCoarse_labelIds``: 0 void, 1 free space (drivable road), obstacle ids."""
    out = np.zeros(frame.train_ids.shape, np.uint8)
    out[frame.train_ids == ROAD] = LAF_FREE_SPACE
    for ob in frame.obstacles:
        out[(frame.instance_ids == ob["instance_id"]) & (frame.train_ids == VOID)] = LAF_OBSTACLE_IDS[ob["kind"]]
    return out


class LostAndFoundWriter:
    """Writes frames into a LostAndFound tree (``root``/leftImg8bit, gtCoarse, camera)."""

    def __init__(self, root, split: str):
        self.root = Path(root)
        self.split = _check_name(split, "split", r"[A-Za-z0-9_-]+")

    @staticmethod
    def scene_dir(scene_no: int, scene: str) -> str:
        _check_name(scene, "LostAndFound scene name", r"[A-Za-z0-9_]+")
        return f"{int(scene_no):02d}_{scene}"

    def write(self, frame: Frame, scene_no: int, scene: str, seq: int, frame_no: int) -> dict[str, Path]:
        d = self.scene_dir(scene_no, scene)
        stem = f"{d}_{int(seq):06d}_{int(frame_no):06d}"
        rel = Path(self.split) / d
        paths = {
            "image": self.root / "leftImg8bit" / rel / f"{stem}_leftImg8bit.png",
            "label_ids": self.root / "gtCoarse" / rel / f"{stem}_gtCoarse_labelIds.png",
            "camera": self.root / "camera" / rel / f"{stem}_camera.json",
        }
        _imwrite(paths["image"], frame.image)
        _imwrite(paths["label_ids"], laf_label_ids(frame))
        _write_json(paths["camera"], frame.camera.cityscapes_json())
        return paths
