"""Loaders for the benchmark and training layouts, all yielding :class:`Record`.

* SMIYC RoadAnomaly21 (Anomaly Track): ``dataset_AnomalyTrack/images/{fid}.jpg``,
  ``labels_masks/{fid}_labels_semantic.png`` (0 in-distribution, 1 anomaly, anything else void).
* SMIYC RoadObstacle21 (Obstacle Track): ``dataset_ObstacleTrack/images/{fid}.webp``, same labels
  (255 off the road); scene = ``fid.split('_')[0]``.
* LostAndFound: ``leftImg8bit/{split}/{NN}_{scene}/{fid}_leftImg8bit.png``,
  ``gtCoarse/{split}/{NN}_{scene}/{fid}_gtCoarse_labelIds.png`` (id 0 void, 1 free space -> 0,
  2..200 obstacle -> 1), ``camera/{split}/.../{fid}_camera.json`` when present; the official frame
  selections ("valid": the benchmark's LostAndFound-test/-train, "noknown": LostAndFound NoKnown).
* Fishyscapes LostAndFound validation (100 frames), labels 0 in-distribution, 1 OOD, 255 void, in
  the benchmark's layout ``dataset_FishyLAF/labels/val/{fid}_fishy-labels.png`` or the public zip's
  ``fishyscapes_lostandfound/{NNNN}_{fid}_labels.png``; the images are the LostAndFound frames of the
  same fid (``leftImg8bit/{train|test}/{NN}_{scene}/{fid}_leftImg8bit.{png|webp|jpg}``, or a flat
  ``laf_images/`` folder).
* Cityscapes: ``leftImg8bit/{split}/{city}/{fid}_leftImg8bit.png`` with
  ``gtFine/{split}/{city}/{fid}_gtFine_labelTrainIds.png`` (or ``_labelIds.png``, mapped).
* synthroad: rendered on the fly.

numpy/OpenCV only. A missing or malformed tree raises FileNotFoundError / ValueError naming the path.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from csl_ros.data.registry import DATASETS as DATASET_REGISTRY
from csl_ros.data.synthroad import render_sequence

VOID = 255


@dataclass
class Record:
    """One frame: RGB image, OOD label map (0 in-distribution, 1 anomaly, 255 void), camera."""

    frame_id: str
    rgb: np.ndarray                       # (H, W, 3) uint8
    label: np.ndarray | None              # (H, W) uint8 0/1/255; None where withheld (SMIYC test)
    camera: dict | None = None            # fx, fy, cx, cy (px), height_m, pitch_deg (+ down), roll_deg
    semantic: np.ndarray | None = None    # (H, W) uint8 Cityscapes trainIds (Cityscapes, synthroad)
    # Physical obstacles where the dataset knows them (synthroad: the generator's records, with the
    # exact forward distance ``distance_m`` and a drive-wide ``instance_id``) and their pixels:
    # ``obstacle_ids`` (H, W) uint8, 0 none, k = obstacles[k - 1].
    obstacles: list | None = None
    obstacle_ids: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------
# label mappings
# --------------------------------------------------------------------------------------------------

def _lut(pairs: dict[int, int], default: int = VOID) -> np.ndarray:
    lut = np.full(256, default, np.uint8)
    for k, v in pairs.items():
        lut[k] = v
    return lut


_SMIYC_LUT = _lut({0: 0, 1: 1})                               # anything else is void
_LAF_LUT = _lut({1: 0, **{k: 1 for k in range(2, 201)}})      # 0 and > 200 void
# Cityscapes labelId -> trainId (public label table; ids without a train class are void).
_CS_LABEL_TO_TRAIN = _lut({7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                           23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18})


def map_smiyc_label(raw: np.ndarray) -> np.ndarray:
    """SMIYC ``*_labels_semantic.png``: 0 -> 0, 1 -> 1, everything else -> 255."""
    return _SMIYC_LUT[raw]


def map_fishyscapes_label(raw: np.ndarray) -> np.ndarray:
    """Fishyscapes: 0 in-distribution, 1 OOD, 255 (and anything else) void."""
    return _SMIYC_LUT[raw]


def map_laf_label(raw: np.ndarray) -> np.ndarray:
    """LostAndFound ``*_gtCoarse_labelIds.png``: 0 -> void, 1 (free space) -> 0, 2..200 -> 1.

    The "non-hazard" ids (31, 33, 34, 36-39) count as obstacles, as in the benchmark.
    """
    return _LAF_LUT[raw]


def cityscapes_label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    return _CS_LABEL_TO_TRAIN[label_ids]


def train_ids_to_ood_label(train_ids: np.ndarray) -> np.ndarray:
    """Cityscapes has no anomalies: every valid class pixel is 0, void stays 255."""
    return np.where(train_ids < 19, 0, VOID).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# file reading
# --------------------------------------------------------------------------------------------------

def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot decode image {p} (truncated or unsupported format)")
    return np.ascontiguousarray(img[:, :, ::-1])


def _png_color_type(path: Path) -> int | None:
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[25]


def read_label_png(path: str | Path) -> np.ndarray:
    """A single-channel label PNG as (H, W) uint8 raw ids.

    Palette PNGs give their palette indices (not colours); RGB PNGs are accepted only when the three
    channels are equal.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"label file not found: {p}")
    if _png_color_type(p) == 3:     # palette: the indices are the labels
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover - pillow ships with matplotlib
            raise ValueError(f"{p} is a palette PNG; reading its indices needs Pillow") from exc
        with Image.open(p) as im:
            lab = np.array(im)
    else:
        lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if lab is None:
            raise ValueError(f"cannot decode label file {p} (truncated or not an image)")
    if lab.ndim == 3:
        if lab.shape[2] >= 3 and np.array_equal(lab[..., 0], lab[..., 1]) \
                and np.array_equal(lab[..., 0], lab[..., 2]):
            lab = lab[..., 0]
        else:
            raise ValueError(f"label file {p} has {lab.shape[2]} distinct channels; expected a "
                             f"single-channel id map")
    if lab.dtype != np.uint8:
        if lab.max(initial=0) > 255:
            raise ValueError(f"label file {p} has ids > 255 ({lab.dtype}); expected 8-bit ids")
        lab = lab.astype(np.uint8)
    return lab


# Label files of the benchmark layouts: file name suffix -> label kind (the id mapping).
FISHY_BENCHMARK_SUFFIX = "_fishy-labels.png"    # dataset_FishyLAF/labels/val/{fid}_fishy-labels.png
FISHY_ZIP_SUFFIX = "_labels.png"                # fishyscapes_lostandfound/{NNNN}_{fid}_labels.png
LABEL_SUFFIXES = {
    "_labels_semantic.png": "smiyc",
    "_gtCoarse_labelIds.png": "laf",
    FISHY_BENCHMARK_SUFFIX: "fishyscapes",
}
LABEL_MAPPINGS = {"smiyc": map_smiyc_label, "laf": map_laf_label,
                  "fishyscapes": map_fishyscapes_label}


def parse_label_name(name: str) -> tuple[str, str] | None:
    """(frame id, label kind) of a benchmark label file name, None when it is not one.

    ``{fid}_labels_semantic.png`` (SMIYC), ``{fid}_gtCoarse_labelIds.png`` (LostAndFound),
    ``{fid}_fishy-labels.png`` and ``{NNNN}_{fid}_labels.png`` (Fishyscapes, benchmark and zip).
    """
    for suffix, kind in LABEL_SUFFIXES.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)], kind
    if name.endswith(FISHY_ZIP_SUFFIX):
        prefix, _, rest = name.partition("_")
        if prefix.isdigit() and len(rest) > len(FISHY_ZIP_SUFFIX):
            return rest[:-len(FISHY_ZIP_SUFFIX)], "fishyscapes"
    return None


def read_label(path: str | Path, kind: str) -> np.ndarray:
    """A label file of ``kind`` (``LABEL_MAPPINGS``) as 0 / 1 / 255."""
    return LABEL_MAPPINGS[kind](read_label_png(path))


LAF_IMAGE_SUFFIX = "_leftImg8bit"
LAF_IMAGE_EXTENSIONS = (".png", ".webp", ".jpg")   # the order the benchmark's loader tries them in


def laf_image_index(files) -> dict[str, Path]:
    """{fid: path} of ``{fid}_leftImg8bit.{png|webp|jpg}`` files; .png before .webp before .jpg."""
    index: dict[str, Path] = {}
    rank: dict[str, int] = {}
    for f in files:
        f = Path(f)
        ext = f.suffix.lower()
        stem = f.name[:-len(f.suffix)]
        if ext not in LAF_IMAGE_EXTENSIONS or not stem.endswith(LAF_IMAGE_SUFFIX):
            continue
        fid, r = stem[:-len(LAF_IMAGE_SUFFIX)], LAF_IMAGE_EXTENSIONS.index(ext)
        if r < rank.get(fid, len(LAF_IMAGE_EXTENSIONS)):
            index[fid], rank[fid] = f, r
    return index


def camera_from_cityscapes_json(path: str | Path) -> dict:
    """Cityscapes / LostAndFound ``*_camera.json`` -> camera dict (height = extrinsic z)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text())
        ext, intr = d["extrinsic"], d["intrinsic"]
        return {"fx": float(intr["fx"]), "fy": float(intr["fy"]), "cx": float(intr["u0"]),
                "cy": float(intr["v0"]), "height_m": float(ext["z"]),
                "pitch_deg": math.degrees(float(ext["pitch"])),
                "roll_deg": math.degrees(float(ext.get("roll", 0.0)))}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed camera file {p}: {exc}") from exc


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


# --------------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------------

class _Dataset:
    """A list of frames; ``dataset[i]`` loads frame i, iteration loads them in order."""

    name = "dataset"
    frame_ids: list[str]

    def __len__(self) -> int:
        return len(self.frame_ids)

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Record:  # pragma: no cover - overridden
        raise NotImplementedError


class SmiycTrack(_Dataset):
    """SMIYC RoadAnomaly21 / RoadObstacle21 in the benchmark layout.

    ``root``: the ``dataset_AnomalyTrack`` / ``dataset_ObstacleTrack`` folder or its parent.
    ``require_labels``: frames without a label file (the withheld test labels) are skipped when True,
    yielded with ``label=None`` when False. ``scenes``: Obstacle Track scene filter
    (``fid.split('_')[0]``), None for all.
    """

    def __init__(self, root: str | Path, track: str, require_labels: bool = True,
                 scenes: Sequence[str] | None = None):
        if track not in ("anomaly", "obstacle"):
            raise ValueError(f"SMIYC track must be 'anomaly' or 'obstacle', got {track!r}")
        sub, ext = (("dataset_AnomalyTrack", "jpg") if track == "anomaly"
                    else ("dataset_ObstacleTrack", "webp"))
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"SMIYC root not found: {root}")
        base = root if (root / "images").is_dir() else root / sub
        self.name = f"smiyc-{track}"
        self.root = base
        self.images_dir = _require_dir(base / "images", f"SMIYC {track} images folder")
        self.labels_dir = base / "labels_masks"
        images = {}
        for e in (ext, "jpg", "webp", "png"):   # the benchmark's format first, re-encoded copies next
            images = {p.stem: p for p in self.images_dir.glob(f"*.{e}")}
            if images:
                break
        if not images:
            raise FileNotFoundError(f"no *.{ext} images in {self.images_dir}")
        if require_labels:
            _require_dir(self.labels_dir, f"SMIYC {track} labels folder")
        fids = sorted(images)
        if scenes is not None:
            scenes = set(scenes)
            fids = [f for f in fids if f.split("_")[0] in scenes]
        if require_labels:
            fids = [f for f in fids if self._label_path(f).is_file()]
            if not fids:
                raise FileNotFoundError(f"no {{fid}}_labels_semantic.png in {self.labels_dir} "
                                        f"matches an image in {self.images_dir}")
        self.frame_ids = fids
        self._images = images

    def _label_path(self, fid: str) -> Path:
        return self.labels_dir / f"{fid}_labels_semantic.png"

    def __getitem__(self, i: int) -> Record:
        fid = self.frame_ids[i]
        rgb = read_rgb(self._images[fid])
        lp = self._label_path(fid)
        label = map_smiyc_label(read_label_png(lp)) if lp.is_file() else None
        if label is not None and label.shape != rgb.shape[:2]:
            raise ValueError(f"label {lp} is {label.shape}, image is {rgb.shape[:2]}")
        return Record(fid, rgb, label)


def smiyc_anomaly(root, **kw) -> SmiycTrack:
    return SmiycTrack(root, "anomaly", **kw)


def smiyc_obstacle(root, **kw) -> SmiycTrack:
    return SmiycTrack(root, "obstacle", **kw)


# LostAndFound frame selections of the benchmark (road_anomaly_benchmark/datasets/tracks.py):
# indices (into the split sorted by fid) of frames whose labels are all zero.
LAF_INVALID_INDICES = {
    "test": (17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792, 793),
    "train": (44, 67, 88, 109, 131, 614),
}
LAF_SPLIT_SIZES = {"test": 1203, "train": 1036}
# NoKnown: LostAndFound-test without sequences showing children and bicycles (known classes).
LAF_NOKNOWN_DROP_PREFIXES = ("15_Rechbergstr_Deckenpfronn", "01_Hanns_Klemm_Str_45_000006",
                             "01_Hanns_Klemm_Str_45_000007", "10_Schlossberg_9_000004")
LAF_SUBSETS = ("all", "valid", "noknown")


def laf_select(fids: Sequence[str], split: str, subset: str, where: str = "") -> list[str]:
    """The benchmark's LostAndFound frame selection from all fids of a split.

    ``all``: every frame; ``valid``: drop the all-zero-label indices of the split sorted by fid
    (LostAndFound-test: 1203 -> 1186); ``noknown`` (test only): then drop the known-class prefixes
    (-> 1043). The index rule needs the complete split.
    """
    if subset not in LAF_SUBSETS:
        raise ValueError(f"unknown LostAndFound subset {subset!r}; choose one of {LAF_SUBSETS}")
    ordered = sorted(fids)
    if subset == "all":
        return ordered
    if subset == "noknown" and split != "test":
        raise ValueError("the NoKnown subset is defined on the LostAndFound test split only")
    if split not in LAF_INVALID_INDICES:
        raise ValueError(f"no official frame selection for LostAndFound split {split!r}")
    expected = LAF_SPLIT_SIZES[split]
    if len(ordered) != expected:
        raise ValueError(f"the LostAndFound {split} split{' at ' + where if where else ''} has "
                         f"{len(ordered)} frames, the benchmark's index rule needs all {expected}")
    drop = set(LAF_INVALID_INDICES[split])
    kept = [f for i, f in enumerate(ordered) if i not in drop]
    if subset == "noknown":
        kept = [f for f in kept if not f.startswith(LAF_NOKNOWN_DROP_PREFIXES)]
    return kept


class LostAndFound(_Dataset):
    """LostAndFound (cityscapesScripts layout), frames discovered from the images as the benchmark."""

    IMAGE_SUFFIX = LAF_IMAGE_SUFFIX

    def __init__(self, root: str | Path, split: str = "test", subset: str = "all"):
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"LostAndFound root not found: {root}")
        self.root, self.split, self.subset = root, split, subset
        self.name = "laf-noknown" if subset == "noknown" else "laf"
        img_dir = _require_dir(root / "leftImg8bit" / split, "LostAndFound image folder")
        self.gt_dir = _require_dir(root / "gtCoarse" / split, "LostAndFound gtCoarse folder")
        self._images = laf_image_index(img_dir.glob(f"*/*{self.IMAGE_SUFFIX}.*"))
        if not self._images:
            raise FileNotFoundError(f"no */*{self.IMAGE_SUFFIX}.png (.webp, .jpg) images in {img_dir}")
        self.frame_ids = laf_select(list(self._images), split, subset, str(img_dir))
        missing = [f for f in self.frame_ids if not self._label_path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} LostAndFound label file(s) missing under "
                                    f"{self.gt_dir}, e.g. {self._label_path(missing[0])}")

    def _label_path(self, fid: str) -> Path:
        return self.gt_dir / self._images[fid].parent.name / f"{fid}_gtCoarse_labelIds.png"

    def _camera_path(self, fid: str) -> Path:
        return self.root / "camera" / self.split / self._images[fid].parent.name / f"{fid}_camera.json"

    def __getitem__(self, i: int) -> Record:
        fid = self.frame_ids[i]
        rgb = read_rgb(self._images[fid])
        lp = self._label_path(fid)
        label = map_laf_label(read_label_png(lp))
        if label.shape != rgb.shape[:2]:
            raise ValueError(f"label {lp} is {label.shape}, image is {rgb.shape[:2]}")
        cp = self._camera_path(fid)
        camera = camera_from_cityscapes_json(cp) if cp.is_file() else None
        return Record(fid, rgb, label, camera)


def laf(root, split: str = "test") -> LostAndFound:
    return LostAndFound(root, split, "all")


def laf_noknown(root) -> LostAndFound:
    return LostAndFound(root, "test", "noknown")


class FishyscapesLAF(_Dataset):
    """Fishyscapes LostAndFound validation, in the benchmark's layout or the public zip's.

    Labels: ``{root}/dataset_FishyLAF/labels/val/{fid}_fishy-labels.png`` (``root`` may also be the
    ``dataset_FishyLAF`` folder itself) or ``{root}/fishyscapes_lostandfound/{NNNN}_{fid}_labels.png``.
    Images: the LostAndFound frames of the same fid, ``{fid}_leftImg8bit.{png|webp|jpg}``, from a flat
    ``{root}/laf_images/`` folder or a LostAndFound tree (``leftImg8bit/{train|test}/{NN}_{scene}/``):
    ``laf_root`` when given, else ``root``, ``root/dataset_LostAndFound`` or, beside a
    ``dataset_FishyLAF`` root, ``../dataset_LostAndFound`` (the benchmark's datasets folder).
    """

    name = "fishyscapes-laf"

    def __init__(self, root: str | Path, laf_root: str | Path | None = None):
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"Fishyscapes root not found: {root}")
        self.root = root
        layouts = [d for d in (root / "dataset_FishyLAF" / "labels" / "val", root / "labels" / "val",
                               root / "fishyscapes_lostandfound") if d.is_dir()]
        if not layouts:
            raise FileNotFoundError(
                f"Fishyscapes label folder not found under {root} (looked for "
                f"dataset_FishyLAF/labels/val/*{FISHY_BENCHMARK_SUFFIX}, labels/val/ and "
                f"fishyscapes_lostandfound/NNNN_*{FISHY_ZIP_SUFFIX})")
        if len(layouts) > 1:
            raise ValueError(f"two Fishyscapes label folders under {root}: {layouts[0]} and "
                             f"{layouts[1]}; point --root at one of them")
        self.labels_dir = layouts[0]
        self._labels: dict[str, Path] = {}
        for p in sorted(self.labels_dir.glob("*.png")):
            parsed = parse_label_name(p.name)
            if parsed is None or parsed[1] != "fishyscapes":
                raise ValueError(f"unexpected file in the Fishyscapes label folder: {p} (expected "
                                 f"{{fid}}{FISHY_BENCHMARK_SUFFIX} or NNNN_{{fid}}{FISHY_ZIP_SUFFIX})")
            if parsed[0] in self._labels:
                raise ValueError(f"two Fishyscapes labels for frame {parsed[0]}: "
                                 f"{self._labels[parsed[0]]} and {p}")
            self._labels[parsed[0]] = p
        if not self._labels:
            raise FileNotFoundError(f"no Fishyscapes label files in {self.labels_dir}")
        if laf_root is not None:
            trees = [Path(laf_root)]
        else:
            trees = [root, root / "dataset_LostAndFound"]
            if root.name == "dataset_FishyLAF":
                trees.append(root.parent / "dataset_LostAndFound")
        self.image_dirs = [root / "laf_images"] + [t / "leftImg8bit" for t in trees]
        files = list((root / "laf_images").glob(f"*{LAF_IMAGE_SUFFIX}.*"))
        for t in trees:
            files += (t / "leftImg8bit").glob(f"*/*/*{LAF_IMAGE_SUFFIX}.*")
        index = laf_image_index(files)
        self.frame_ids = sorted(self._labels)
        missing = [f for f in self.frame_ids if f not in index]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} Fishyscapes frame(s) have no LostAndFound image "
                f"({'/'.join(LAF_IMAGE_EXTENSIONS)}) in {' or '.join(map(str, self.image_dirs))}, "
                f"e.g. {missing[0]}{LAF_IMAGE_SUFFIX}.png")
        self._images = index

    def __getitem__(self, i: int) -> Record:
        fid = self.frame_ids[i]
        rgb = read_rgb(self._images[fid])
        label = read_label(self._labels[fid], "fishyscapes")
        if label.shape != rgb.shape[:2]:
            raise ValueError(f"label {self._labels[fid]} is {label.shape}, image is {rgb.shape[:2]}")
        return Record(fid, rgb, label)


class Cityscapes(_Dataset):
    """Cityscapes ``leftImg8bit`` + ``gtFine`` (trainIds, or labelIds mapped to trainIds)."""

    name = "cityscapes"

    def __init__(self, root: str | Path, split: str = "val"):
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"Cityscapes root not found: {root}")
        self.root, self.split = root, split
        img_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes image folder")
        self.gt_dir = _require_dir(root / "gtFine" / split, "Cityscapes gtFine folder")
        files = sorted(img_dir.glob("*/*_leftImg8bit.png"))
        if not files:
            raise FileNotFoundError(f"no */*_leftImg8bit.png images in {img_dir}")
        self._images = {p.name[:-len("_leftImg8bit.png")]: p for p in files}
        self.frame_ids = sorted(self._images)
        first = self.frame_ids[0]
        if self._gt_path(first, "labelTrainIds") is None and self._gt_path(first, "labelIds") is None:
            raise FileNotFoundError(f"no gtFine label for {first} under {self.gt_dir} (expected "
                                    f"{first}_gtFine_labelTrainIds.png or _labelIds.png)")

    def _gt_path(self, fid: str, kind: str) -> Path | None:
        p = self.gt_dir / self._images[fid].parent.name / f"{fid}_gtFine_{kind}.png"
        return p if p.is_file() else None

    def __getitem__(self, i: int) -> Record:
        fid = self.frame_ids[i]
        rgb = read_rgb(self._images[fid])
        tp = self._gt_path(fid, "labelTrainIds")
        if tp is not None:
            train_ids = read_label_png(tp)
        else:
            lp = self._gt_path(fid, "labelIds")
            if lp is None:
                raise FileNotFoundError(f"no gtFine label for {fid} under {self.gt_dir}")
            train_ids = cityscapes_label_ids_to_train_ids(read_label_png(lp))
        if train_ids.shape != rgb.shape[:2]:
            raise ValueError(f"gtFine label of {fid} is {train_ids.shape}, image is {rgb.shape[:2]}")
        cp = self.root / "camera" / self.split / self._images[fid].parent.name / f"{fid}_camera.json"
        camera = camera_from_cityscapes_json(cp) if cp.is_file() else None
        return Record(fid, rgb, train_ids_to_ood_label(train_ids), camera, semantic=train_ids)


class Synthroad(_Dataset):
    """A synthroad drive rendered on the fly (``csl_ros.data.synthroad.render_sequence``).

    Frames are consecutive: iterate rather than index (``dataset[i]`` renders frames 0..i).
    """

    name = "synthroad"

    def __init__(self, seed: int = 0, n_frames: int = 100, size: tuple[int, int] = (512, 1024),
                 obstacles: str = "obstacle", speed_mps: float = 10.0, fps: float = 10.0):
        if n_frames < 1:
            raise ValueError(f"synthroad needs at least one frame, got {n_frames}")
        if obstacles not in ("none", "obstacle", "anomaly"):
            raise ValueError(f"synthroad obstacles must be none, obstacle or anomaly, got "
                             f"{obstacles!r}")
        self.seed, self.size, self.obstacles = int(seed), tuple(size), obstacles
        self.speed_mps, self.fps = float(speed_mps), float(fps)
        self.frame_ids = [f"synthroad_s{self.seed}_{i:06d}" for i in range(int(n_frames))]

    @staticmethod
    def record(frame, frame_id: str) -> Record:
        cam = frame.camera
        camera = {"fx": float(cam.fx), "fy": float(cam.fy), "cx": float(cam.cx),
                  "cy": float(cam.cy), "height_m": float(cam.height_m),
                  "pitch_deg": float(cam.pitch_deg), "roll_deg": float(cam.roll_deg)}
        records = [dict(o) for o in frame.obstacles][:255]
        ids = np.zeros(frame.instance_ids.shape, np.uint8)
        for k, o in enumerate(records, 1):
            ids[(frame.instance_ids == o["instance_id"]) & (frame.ood_labels == 1)] = k
        return Record(frame_id, frame.image, frame.ood_labels, camera, semantic=frame.train_ids,
                      obstacles=records, obstacle_ids=ids)

    def __iter__(self) -> Iterator[Record]:
        frames = render_sequence(self.seed, len(self), size=self.size, obstacles=self.obstacles,
                                 speed_mps=self.speed_mps, fps=self.fps)
        for fid, frame in zip(self.frame_ids, frames):
            yield self.record(frame, fid)

    def __getitem__(self, i: int) -> Record:
        if not 0 <= i < len(self):
            raise IndexError(i)
        for k, rec in enumerate(self):
            if k == i:
                return rec
        raise IndexError(i)  # pragma: no cover


DATASETS = DATASET_REGISTRY.choices()  # every registered dataset (csl_ros.data.registry)


def open_dataset(name: str, root: str | Path | None = None, **options) -> _Dataset:
    """A registered dataset by name (``DATASETS``); ``root`` is its folder (unused for synthroad).

    Options: ``split`` (laf, cityscapes), ``laf_root`` (fishyscapes-laf), ``require_labels`` (smiyc),
    ``seed``, ``n_frames``, ``size``, ``obstacles``, ``speed_mps``, ``fps`` (synthroad).
    """
    entry = DATASET_REGISTRY.entry(name)
    loader = entry.load()
    kwargs = {**entry.fixed, **options}
    if not entry.root:
        return loader(**kwargs)
    if root is None:
        raise ValueError(f"dataset {name} needs its root folder")
    return loader(root, **kwargs)
