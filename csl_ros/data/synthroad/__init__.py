"""synthroad: a procedural, labelled driving-scene generator (numpy + OpenCV, CPU, deterministic).

A pinhole camera (height 1.2-1.7 m, pitch/roll jitter) looks at a flat world: the ground (road with
asphalt texture and world-space lane markings, curbs, sidewalks, terrain; gentle curves and width
changes) is shaded per pixel by vectorised ray/plane intersection; buildings, walls, fences, poles,
signs, traffic lights, vegetation, vehicles, people and riders are drawn through an inverse-depth
buffer; out-of-distribution obstacles (boxes, planks, cylinders, tyres, bags, debris) are added on
request; exposure, white balance, time of day, blur, noise and JPEG artefacts vary per scene.

Public API::

    from csl_ros.data.synthroad import render_frame, render_sequence, Frame, CameraModel, TRAIN_ID_NAMES
    frame = render_frame(seed, size=(512, 1024), obstacles="none" | "obstacle" | "anomaly")
    frames = render_sequence(seed, n_frames, size=(512, 1024), obstacles="obstacle", speed_mps=10.0, fps=10.0)

Label encodings of a ``Frame``: ``train_ids`` Cityscapes trainIds 0..18 with 255 void (OOD obstacles
are 255); ``instance_ids`` 0 = none, a unique positive id per thing (person, rider, car, truck, bus,
motorcycle, bicycle) and per OOD obstacle (listed in ``frame.obstacles``); ``ood_labels`` with the
SMIYC encoding 0 in-distribution / 1 anomaly / 255 void: "obstacle" scenes void everything that is
not drivable road (trainId 0) or obstacle, "anomaly" scenes have no void, "none" scenes are all 0.
"""
# Bumped whenever the frames rendered for a given (seed, size, obstacles) change, so caches of
# rendered frames (e.g. training data) can be keyed on it.
GENERATOR_VERSION = 2   # 2: spots on debris polygons drawn inside the polygon only

from .camera import CameraModel  # noqa: E402
from .labels import OOD_COLOR, PALETTE, TRAIN_ID_NAMES, TRAIN_TO_LABEL_ID, VOID  # noqa: E402
from .obstacles import OBSTACLE_KINDS  # noqa: E402
from .render import OBSTACLE_MODES, Frame, rare_road_paint_seeds, render_frame, render_sequence  # noqa: E402

__all__ = ["render_frame", "render_sequence", "rare_road_paint_seeds", "Frame", "CameraModel", "TRAIN_ID_NAMES",
           "TRAIN_TO_LABEL_ID", "PALETTE", "OOD_COLOR", "VOID", "OBSTACLE_KINDS", "OBSTACLE_MODES", "GENERATOR_VERSION"]
