"""Cityscapes label tables used by synthroad and the dataset writers.

Only public facts of the Cityscapes label definition: the 19 training classes, their labelIds and the
conventional colour palette.
"""
from __future__ import annotations

import numpy as np

# The 19 Cityscapes training classes, index = trainId.
TRAIN_ID_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)
VOID = 255

ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, \
    PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(19)

# trainId -> Cityscapes labelId (the full 34-id scheme of gtFine_labelIds / gtCoarse).
TRAIN_TO_LABEL_ID = np.array([7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33],
                             dtype=np.uint8)
# "Thing" classes: they carry instances (Cityscapes instanceIds = labelId * 1000 + k).
THING_TRAIN_IDS = frozenset({PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE})

# Conventional Cityscapes colours (RGB) per trainId.
PALETTE = np.array([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
], dtype=np.uint8)
# Colour for OOD (anomaly / obstacle) pixels in previews: a cyan no Cityscapes class uses.
OOD_COLOR = np.array((0, 255, 255), dtype=np.uint8)


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a trainId map (0..18, 255 void) to Cityscapes labelIds (void -> 0 "unlabeled")."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:19] = TRAIN_TO_LABEL_ID
    return lut[np.asarray(train_ids, dtype=np.uint8)]


def palette_lut() -> np.ndarray:
    """(256, 3) uint8 colour lookup for trainIds; void and unused ids are black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:19] = PALETTE
    return lut
