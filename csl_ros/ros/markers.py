"""Obstacles for rviz and planners: geometry from Obstacle records (ROS-free), the MarkerArray and
the PointCloud2 messages.

Every frame's array starts with a DELETEALL marker, so obstacles from the previous frame never
linger, and every marker carries a lifetime, so they also vanish when the camera stops. Each
obstacle with a ground contact point becomes a CUBE standing on the road at that point and a
TEXT_VIEW_FACING label above it. The pipeline gives that point in the camera optical frame (x right,
y down, z forward, metres); :class:`Mounting` (the camera's pose in an ``output_frame`` such as
``base_link``, set by parameters because tf2 is not on PyPI) moves markers and points into that frame.
"""
from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass

import numpy as np

# Optical frame (x right, y down, z forward) -> the camera's body frame (REP 103: x forward, y left,
# z up): the columns are the optical axes expressed in the body frame.
BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

# Depth of the cube along the viewing ray: a monocular camera sees only the front face of an
# obstacle, so the footprint is drawn square (depth = width), capped so a wide low object does not
# become a wall.
MAX_DEPTH_M = 1.0
MIN_SIZE_M = 0.05
LABEL_HEIGHT_M = 0.3
NS_BOX, NS_LABEL = "obstacles", "obstacle_labels"


@dataclass(frozen=True)
class Mounting:
    """Pose of the camera in the output frame: position (metres) and roll, pitch, yaw (degrees,
    REP 103 fixed axes x, y, z of the output frame, applied in that order) of the camera's body
    frame (x forward, y left, z up). All zero: the camera at the origin looking along x; positive
    pitch looks down. ``None`` for :func:`marker_array_msg` keeps the optical frame."""

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    yaw_deg: float = 0.0

    @classmethod
    def from_config(cls, node_cfg) -> "Mounting":
        return cls(node_cfg.mount_x_m, node_cfg.mount_y_m, node_cfg.mount_z_m, node_cfg.mount_roll_deg,
                   node_cfg.mount_pitch_deg, node_cfg.mount_yaw_deg)

    def rotation(self) -> np.ndarray:
        """3x3 rotation output <- optical: Rz(yaw) Ry(pitch) Rx(roll) BODY_FROM_OPTICAL."""
        return self._rotation

    @functools.cached_property
    def _rotation(self) -> np.ndarray:
        # once per mounting, not per obstacle point (a frozen dataclass: the angles never change)
        r, p, y = (math.radians(a) for a in (self.roll_deg, self.pitch_deg, self.yaw_deg))
        rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
        ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
        rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
        return rz @ ry @ rx @ BODY_FROM_OPTICAL

    def point(self, optical_xyz) -> tuple[float, float, float]:
        """An optical-frame point in the output frame."""
        out = self.rotation() @ np.asarray(optical_xyz, np.float64) + (self.x, self.y, self.z)
        return tuple(float(v) for v in out)

    def quaternion(self) -> tuple[float, float, float, float]:
        """(x, y, z, w) of :meth:`rotation`: the orientation of optical-frame boxes in the output frame."""
        return rotation_quaternion(self.rotation())


def rotation_quaternion(m: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) unit quaternion of a 3x3 rotation matrix (Shepperd's method, stable for any angle)."""
    t = float(np.trace(m))
    if t > 0:
        s = math.sqrt(t + 1.0) * 2
        q = ((m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s)
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k]) * 2
        v = [0.0, 0.0, 0.0]
        v[i], v[j], v[k] = 0.25 * s, (m[j, i] + m[i, j]) / s, (m[k, i] + m[i, k]) / s
        q = (*v, (m[k, j] - m[j, k]) / s)
    return tuple(float(c) for c in q)


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
        if getattr(ob, "coasted", 0):   # not detected in this frame: where its track predicts it
            label += f"  coasted {ob.coasted}"
        if getattr(ob, "faint", False):   # its track continued on a faint area (below the threshold)
            label += "  faint"
        specs.append(MarkerSpec(NS_LABEL, int(ob.id), "text", (x, y - h - LABEL_HEIGHT_M, z),
                                (0.0, 0.0, LABEL_HEIGHT_M), (1.0, 1.0, 1.0, 1.0), label))
    return specs


def _in_frame(header, frame_id: str):
    """A copy of ``header`` with ``frame_id`` (the input image's own frame when empty)."""
    from std_msgs.msg import Header  # optional: ROS messages; the geometry above is used without ROS

    return Header(stamp=header.stamp, frame_id=frame_id or header.frame_id)


def clear_markers_msg(header):
    """A MarkerArray with only DELETEALL (the node deactivating)."""
    from visualization_msgs.msg import Marker, MarkerArray  # optional: ROS messages (see _in_frame)

    return MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])


def marker_array_msg(obstacles, header, *, lifetime_s: float = 0.0, mounting: Mounting | None = None,
                     output_frame: str = ""):
    """visualization_msgs/MarkerArray: DELETEALL, then the obstacles' cubes and labels with ``header``'s
    stamp, each living ``lifetime_s`` (0: until replaced). In ``output_frame`` placed by ``mounting``
    when given, else in ``header``'s frame (the input image's optical frame)."""
    # optional: ROS messages (see _in_frame)
    from builtin_interfaces.msg import Duration
    from visualization_msgs.msg import Marker

    header = _in_frame(header, output_frame if mounting is not None else "")
    arr = clear_markers_msg(header)
    lifetime = Duration(sec=int(lifetime_s), nanosec=int(round((lifetime_s % 1.0) * 1e9)) % 1_000_000_000)
    orientation = mounting.quaternion() if mounting is not None else (0.0, 0.0, 0.0, 1.0)
    for spec in obstacle_marker_specs(obstacles):
        m = Marker()
        m.header = header
        m.ns = spec.ns
        m.id = spec.id
        m.type = Marker.CUBE if spec.kind == "cube" else Marker.TEXT_VIEW_FACING
        m.action = Marker.ADD
        m.lifetime = lifetime
        position = mounting.point(spec.position) if mounting is not None else spec.position
        m.pose.position.x, m.pose.position.y, m.pose.position.z = position
        q = m.pose.orientation
        q.x, q.y, q.z, q.w = orientation
        m.scale.x, m.scale.y, m.scale.z = spec.scale
        m.color.r, m.color.g, m.color.b, m.color.a = spec.color
        m.text = spec.text
        m.frame_locked = False
        arr.markers.append(m)
    return arr


# sensor_msgs/PointField datatypes used by obstacle_points_msg
_FLOAT32, _UINT32 = 7, 6
POINT_FIELDS = (("x", _FLOAT32), ("y", _FLOAT32), ("z", _FLOAT32), ("id", _UINT32), ("score", _FLOAT32),
                ("width_m", _FLOAT32), ("height_m", _FLOAT32), ("age", _UINT32), ("coasted", _UINT32))
_POINT = struct.Struct("<fffIfffII")


def obstacle_points(obstacles, mounting: Mounting | None = None) -> list[tuple]:
    """(x, y, z, id, score, width_m, height_m, age, coasted) per obstacle with a ground contact point:
    the point in the output frame (``mounting``) or the optical frame; ``id`` is the record's id (a track
    id when the pipeline tracks obstacles), score its maximum fused score, ``age`` its track's frames
    since birth (0 untracked), ``coasted`` the frames since its track's last detection (0: detected in
    this frame)."""
    out = []
    for ob in obstacles:
        if ob.contact_point_m is None or ob.width_m is None or ob.height_m is None:
            continue
        x, y, z = mounting.point(ob.contact_point_m) if mounting is not None else ob.contact_point_m
        out.append((float(x), float(y), float(z), int(ob.id), float(ob.max_score), float(ob.width_m),
                    float(ob.height_m), int(getattr(ob, "track_age", None) or 0), int(getattr(ob, "coasted", 0))))
    return out


def obstacle_points_msg(obstacles, header, *, mounting: Mounting | None = None, output_frame: str = ""):
    """sensor_msgs/PointCloud2, one point per obstacle at its ground contact (fields x, y, z, id, score,
    width_m, height_m, age, coasted), in ``output_frame`` when ``mounting`` is given, else in ``header``'s frame."""
    from sensor_msgs.msg import PointCloud2, PointField  # optional: ROS messages (see _in_frame)

    points = obstacle_points(obstacles, mounting)
    msg = PointCloud2(header=_in_frame(header, output_frame if mounting is not None else ""), height=1,
                      width=len(points), is_bigendian=False, point_step=_POINT.size,
                      row_step=_POINT.size * len(points), is_dense=True)
    offsets = range(0, 4 * len(POINT_FIELDS), 4)   # every field is 4 bytes, packed as _POINT
    msg.fields = [PointField(name=n, offset=o, datatype=t, count=1) for (n, t), o in zip(POINT_FIELDS, offsets)]
    msg.data = b"".join(_POINT.pack(*p) for p in points)
    return msg
