"""Obstacle markers for rviz: geometry from Obstacle records (ROS-free) and the MarkerArray message.

Every frame's array starts with a DELETEALL marker, so obstacles from the previous frame never
linger. Each obstacle with a ground contact point becomes a CUBE standing on the road at that point
(camera optical frame: x right, y down, z forward, metres) and a TEXT_VIEW_FACING label above it.
"""
from __future__ import annotations

from dataclasses import dataclass

# Depth of the cube along the viewing ray: a monocular camera sees only the front face of an
# obstacle, so the footprint is drawn square (depth = width), capped so a wide low object does not
# become a wall.
MAX_DEPTH_M = 1.0
MIN_SIZE_M = 0.05
LABEL_HEIGHT_M = 0.3
NS_BOX, NS_LABEL = "obstacles", "obstacle_labels"


@dataclass(frozen=True)
class MarkerSpec:
    ns: str
    id: int
    kind: str                               # "cube" or "text"
    position: tuple[float, float, float]    # optical frame, metres
    scale: tuple[float, float, float]       # cube: x, y, z extents; text: z = text height
    color: tuple[float, float, float, float]
    text: str = ""


def score_color(score: float, alpha: float = 0.6) -> tuple[float, float, float, float]:
    """Yellow (score 0.5) to red (score 1) so the strongest obstacles stand out."""
    s = min(max((float(score) - 0.5) * 2.0, 0.0), 1.0)
    return (1.0, 1.0 - s, 0.0, alpha)


def obstacle_marker_specs(obstacles) -> list[MarkerSpec]:
    """Cube + label specs for the obstacles that have metric geometry (others are skipped: without
    camera_info there is no ground contact point)."""
    specs = []
    for ob in obstacles:
        if ob.contact_point_m is None or ob.width_m is None or ob.height_m is None:
            continue
        x, y, z = (float(v) for v in ob.contact_point_m)
        w = max(float(ob.width_m), MIN_SIZE_M)
        h = max(float(ob.height_m), MIN_SIZE_M)
        d = min(w, MAX_DEPTH_M)
        # The contact point is where the obstacle meets the road (its bottom front): the cube's
        # centre is half its height above it (y points down) and half its depth behind it.
        centre = (x, y - h / 2.0, z + d / 2.0)
        specs.append(MarkerSpec(NS_BOX, int(ob.id), "cube", centre, (w, h, d), score_color(ob.max_score)))
        label = f"#{ob.id} {ob.distance_m:.1f} m  score {ob.max_score:.2f}" if ob.distance_m is not None \
            else f"#{ob.id} score {ob.max_score:.2f}"
        if getattr(ob, "track_age", None) is not None:   # tracked: the id is the track's, stable across frames
            label += f"  age {ob.track_age}"
        specs.append(MarkerSpec(NS_LABEL, int(ob.id), "text", (x, y - h - LABEL_HEIGHT_M, z),
                                (0.0, 0.0, LABEL_HEIGHT_M), (1.0, 1.0, 1.0, 1.0), label))
    return specs


def marker_array_msg(obstacles, header):
    """visualization_msgs/MarkerArray: DELETEALL, then the obstacles' cubes and labels, each with
    ``header`` (the input image's stamp and optical frame)."""
    from visualization_msgs.msg import Marker, MarkerArray

    arr = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.action = Marker.DELETEALL
    arr.markers.append(clear)
    for spec in obstacle_marker_specs(obstacles):
        m = Marker()
        m.header = header
        m.ns = spec.ns
        m.id = spec.id
        m.type = Marker.CUBE if spec.kind == "cube" else Marker.TEXT_VIEW_FACING
        m.action = Marker.ADD
        m.pose.position.x, m.pose.position.y, m.pose.position.z = spec.position
        m.pose.orientation.w = 1.0
        m.scale.x, m.scale.y, m.scale.z = spec.scale
        m.color.r, m.color.g, m.color.b, m.color.a = spec.color
        m.text = spec.text
        m.frame_locked = False
        arr.markers.append(m)
    return arr
