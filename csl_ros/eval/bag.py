"""rosbag2 conversion of benchmark datasets and reading back, with the pure-Python ``rosbags`` library.

A converted bag holds, per frame and all with the same header stamp (and log time):

* ``/camera/image_raw`` — sensor_msgs/Image ``rgb8`` (or ``/camera/image_raw/compressed``,
  sensor_msgs/CompressedImage, with ``compressed=True``),
* ``/camera/camera_info`` — sensor_msgs/CameraInfo, when the dataset knows the camera,
* ``/eval/ood_labels`` — sensor_msgs/Image ``mono8``: 0 in-distribution, 1 anomaly, 255 void,
* ``/eval/frame_id`` — std_msgs/String, the dataset's frame id (to name frames in reports),
* ``/eval/ground_truth`` — std_msgs/String, JSON ``{"camera": {...}, "obstacles": [...]}``: the
  frame's camera with its mounting (height_m, pitch_deg: LostAndFound's camera files, synthroad's
  generator) and, where the dataset knows them, its physical obstacles (synthroad: ``instance_id``
  and the exact ``distance_m``), for the distance-aware metrics,
* ``/eval/obstacle_ids`` — sensor_msgs/Image ``mono8``: 0 none, k = the k-th obstacle of the JSON.

Camera mounting (height, pitch), which CameraInfo cannot carry, goes to the bag's ``custom_data``.

Integrity: MCAP files we write carry the format's CRC-32s (every chunk's uncompressed CRC, the data
section CRC and the summary CRC; ``rosbags`` writes zeros, so they are filled in after it closes the
file). Every read verifies them first (:func:`check_mcap`): a damaged chunk is an error naming the file,
its byte offset, the log-time range and the topics in it; a damaged message record is an error naming
the file, the topic and its log time. With ``salvage=True`` damaged chunks and records are skipped
instead, and every skipped one is listed in ``BagReader.stats.skipped``.
Writing builds ``rosbags`` message classes here; reading decodes images with the one image codec
(``csl_ros.image_codec``), as the node does.
"""
from __future__ import annotations

import json
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import numpy as np
from rosbags.rosbag2 import Reader, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from csl_ros.image_codec import ImageFormatError, compressed_msg_to_rgb, image_msg_to_rgb, single_channel_msg_to_array

IMAGE_TOPIC = "/camera/image_raw"
COMPRESSED_TOPIC = "/camera/image_raw/compressed"
INFO_TOPIC = "/camera/camera_info"
LABEL_TOPIC = "/eval/ood_labels"
FRAME_ID_TOPIC = "/eval/frame_id"
GROUND_TRUTH_TOPIC = "/eval/ground_truth"
OBSTACLE_IDS_TOPIC = "/eval/obstacle_ids"
CAMERA_FRAME = "camera_optical_frame"
IMAGE_T = "sensor_msgs/msg/Image"
COMPRESSED_T = "sensor_msgs/msg/CompressedImage"
INFO_T = "sensor_msgs/msg/CameraInfo"
STRING_T = "std_msgs/msg/String"
DEFAULT_START_NS = 1_700_000_000 * 10**9   # a fixed, plausible epoch: bags are reproducible
FORMATS = ("mcap", "sqlite3")


class BagError(ValueError):
    """A bag that cannot be read or written; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------------------
# MCAP integrity: the format's CRC-32s (https://mcap.dev/spec), written and verified here
# --------------------------------------------------------------------------------------------------

MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK, _OP_CHUNK_INDEX, _OP_DATA_END = 0x02, 0x04, 0x05, 0x06, 0x08, 0x0F
_FOOTER_SIZE = 1 + 8 + 20          # opcode, length, summary_start, summary_offset_start, summary_crc


def _mcap_str(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return bytes(buf[pos + 4:pos + 4 + n]).decode("utf-8", "replace"), pos + 4 + n


def _decompress_chunk(body, where: str) -> tuple[int, bytes]:
    """(stored uncompressed CRC, uncompressed records) of a chunk record's body."""
    _, _, size, crc = struct.unpack_from("<QQQI", body, 0)
    compression, pos = _mcap_str(body, 28)
    (csize,) = struct.unpack_from("<Q", body, pos)
    data = bytes(body[pos + 8:pos + 8 + csize])
    if len(data) != csize:
        raise BagError(f"{where}: chunk data is shorter than its stated {csize} bytes")
    if compression:
        try:   # the decompressors rosbags reads MCAP chunks with (lz4, zstd)
            from rosbags.rosbag2.storage_mcap import DECOMPRESSORS
        except ImportError:
            DECOMPRESSORS = {}
        if compression not in DECOMPRESSORS:
            raise BagError(f"{where}: unsupported chunk compression {compression!r}")
        try:
            data = DECOMPRESSORS[compression](data, size)
        except Exception as exc:
            raise BagError(f"{where}: chunk does not decompress ({compression}: {exc})") from exc
    if len(data) != size:
        raise BagError(f"{where}: chunk holds {len(data)} bytes, its header says {size}")
    return crc, data


def _mcap_records(f, start: int, end: int, where: str):
    """(opcode, byte offset, body) of the records in ``[start, end)`` of an open MCAP file."""
    pos = start
    while pos < end:
        f.seek(pos)
        head = f.read(9)
        if len(head) < 9:
            raise BagError(f"{where}: record at byte offset {pos} is cut off (the file is truncated)")
        op, length = struct.unpack("<BQ", head)
        if pos + 9 + length > end:
            raise BagError(f"{where}: record at byte offset {pos} (opcode 0x{op:02x}) claims {length} "
                           f"bytes, past the end of its section at {end}: the file is truncated or corrupt")
        yield op, pos, f.read(length)
        pos += 9 + length


def _mcap_layout(f, where: str) -> tuple[int, int, int]:
    """(file size, summary start or 0, footer offset); checks both magics."""
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    if size < 2 * len(MCAP_MAGIC) + _FOOTER_SIZE or f.read(8) != MCAP_MAGIC:
        raise BagError(f"{where}: not an MCAP file or truncated (bad magic at byte 0)")
    f.seek(size - 8)
    if f.read(8) != MCAP_MAGIC:
        raise BagError(f"{where}: the file is truncated (no closing MCAP magic)")
    footer = size - 8 - _FOOTER_SIZE
    f.seek(footer)
    op, length, summary_start, _, _ = struct.unpack("<BQQQI", f.read(_FOOTER_SIZE))
    if op != _OP_FOOTER or length != 20 or summary_start > footer:
        raise BagError(f"{where}: corrupt MCAP footer at byte offset {footer}")
    return size, summary_start, footer


# Files verified in this process, keyed by (path, size, mtime): one evaluation opens a bag several
# times (label check, frames, recorded score topics), and reading gigabytes once is enough.
_VERIFIED: dict[tuple, "McapCheck"] = {}


def add_mcap_crcs(path: str | Path) -> None:
    """Fill in the CRC-32s ``rosbags`` leaves at zero: each chunk's uncompressed CRC, the data
    section CRC (magic through the last data record) and the summary CRC."""
    path = Path(path)
    where = str(path)
    resolved = str(path.resolve())
    for key in [k for k in _VERIFIED if k[0] == resolved]:
        del _VERIFIED[key]
    with open(path, "r+b") as f:
        size, summary_start, footer = _mcap_layout(f, where)
        data_crc = zlib.crc32(MCAP_MAGIC)
        end = summary_start or footer
        for op, pos, body in _mcap_records(f, 8, end, where):
            if op == _OP_DATA_END:
                f.seek(pos + 9)
                f.write(struct.pack("<I", data_crc))
                break
            if op == _OP_CHUNK:
                _, data = _decompress_chunk(body, f"{where}: chunk at byte offset {pos}")
                body = bytearray(body)
                struct.pack_into("<I", body, 24, zlib.crc32(data))
                f.seek(pos + 9 + 24)
                f.write(body[24:28])
            data_crc = zlib.crc32(struct.pack("<BQ", op, len(body)), data_crc)
            data_crc = zlib.crc32(body, data_crc)
        else:
            raise BagError(f"{where}: no MCAP data-end record")
        if summary_start:
            f.seek(summary_start)
            summary = f.read(footer + 1 + 8 + 16 - summary_start)   # through summary_offset_start
            f.seek(footer + 1 + 8 + 16)
            f.write(struct.pack("<I", zlib.crc32(summary)))


@dataclass
class McapCheck:
    """What :func:`check_mcap` found in one file."""

    path: Path
    chunks: int = 0
    chunks_without_crc: int = 0
    damaged: list = field(default_factory=list)   # dicts: file, byte_offset, log_time_ns, topics, reason


def _summary_topics(f, summary_start: int, footer: int, where: str) -> dict[int, list[str]]:
    """{chunk byte offset: topics} from the summary's channel and chunk-index records ({} if none)."""
    topics: dict[int, str] = {}
    chunks: dict[int, list[int]] = {}
    try:
        for op, _, body in _mcap_records(f, summary_start, footer, where):
            if op == _OP_CHANNEL:
                (cid,) = struct.unpack_from("<H", body, 0)
                topics[cid] = _mcap_str(body, 4)[0]
            elif op == _OP_CHUNK_INDEX:
                (offset,) = struct.unpack_from("<Q", body, 16)
                (n,) = struct.unpack_from("<I", body, 32)
                chunks[offset] = [struct.unpack_from("<H", body, 36 + 10 * i)[0] for i in range(n // 10)]
    except (BagError, struct.error):
        return {}
    return {off: sorted({topics.get(c, f"channel {c}") for c in cids}) for off, cids in chunks.items()}


def check_mcap(path: str | Path, salvage: bool = False) -> McapCheck:
    """Verify an MCAP file's CRC-32s: every chunk's, the data section's and the summary's.

    A mismatch is a :class:`BagError` naming the file, the byte offset, the chunk's log-time range and
    its topics; with ``salvage`` the damaged chunks are returned in ``McapCheck.damaged`` instead.
    Chunks written without a CRC (0) cannot be checked; they are counted.
    """
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERIFIED and (salvage or not _VERIFIED[key].damaged):
        return _VERIFIED[key]
    result = _check_mcap(path, salvage)
    _VERIFIED[key] = result
    return result


def _check_mcap(path: Path, salvage: bool) -> McapCheck:
    where = str(path)
    result = McapCheck(path)
    with open(path, "rb") as f:
        size, summary_start, footer = _mcap_layout(f, where)
        topics = _summary_topics(f, summary_start, footer, where) if summary_start else {}
        data_crc = zlib.crc32(MCAP_MAGIC)
        bad_crc = False
        for op, pos, body in _mcap_records(f, 8, summary_start or footer, where):
            if op == _OP_DATA_END:
                (stored,) = struct.unpack_from("<I", body, 0)
                if stored and stored != data_crc and not bad_crc:
                    damage = {"file": str(path), "byte_offset": 0, "log_time_ns": None, "topics": [],
                              "reason": f"the data section (bytes 0..{pos}) fails its CRC check outside "
                                        f"the message chunks (schema, channel or metadata records)"}
                    if not salvage:
                        raise BagError(f"{where}: {damage['reason']}: the file is corrupt")
                    result.damaged.append(damage)
                break
            data_crc = zlib.crc32(struct.pack("<BQ", op, len(body)), data_crc)
            data_crc = zlib.crc32(body, data_crc)
            if op != _OP_CHUNK:
                continue
            result.chunks += 1
            t0, t1 = struct.unpack_from("<QQ", body, 0)
            chunk_where = f"{where}: chunk at byte offset {pos}"
            try:
                crc, data = _decompress_chunk(body, chunk_where)
                reason = None
                if crc == 0:
                    result.chunks_without_crc += 1
                elif zlib.crc32(data) != crc:
                    reason = "fails its CRC check"
            except (BagError, struct.error) as exc:
                reason = str(exc).split(": ")[-1]
            if reason is None:
                continue
            bad_crc = True
            damage = {"file": str(path), "byte_offset": pos, "log_time_ns": [t0, t1],
                      "topics": topics.get(pos, []), "reason": f"chunk {reason}"}
            if not salvage:
                raise BagError(f"{chunk_where} (messages logged {t0}..{t1} ns, topics "
                               f"{', '.join(damage['topics']) or 'unknown'}) {reason}: the file is "
                               f"corrupt; --salvage skips it and lists it")
            result.damaged.append(damage)
        if summary_start:
            f.seek(footer + 1 + 8 + 16)
            (stored,) = struct.unpack("<I", f.read(4))
            f.seek(summary_start)
            if stored and zlib.crc32(f.read(footer + 1 + 8 + 16 - summary_start)) != stored:
                damage = {"file": str(path), "byte_offset": summary_start, "log_time_ns": None,
                          "topics": [], "reason": "the summary section (index) fails its CRC check"}
                if not salvage:
                    raise BagError(f"{where}: summary section at byte offset {summary_start} fails its "
                                   f"CRC check: the file is corrupt")
                result.damaged.append(damage)
    return result


def mcap_messages(path: Path, channels_wanted: dict[str, object], skip_offsets: set[int]):
    """(connection, log time, raw CDR) of the messages of ``path`` in file order, chunks at
    ``skip_offsets`` left out: the reader behind ``--salvage``. ``channels_wanted``: topic ->
    rosbags connection."""
    where = str(path)
    with open(path, "rb") as f:
        _, summary_start, footer = _mcap_layout(f, where)
        by_id: dict[int, str] = {}
        if summary_start:
            for op, _, body in _mcap_records(f, summary_start, footer, where):
                if op == _OP_CHANNEL:
                    by_id[struct.unpack_from("<H", body, 0)[0]] = _mcap_str(body, 4)[0]

        def records(buf):
            pos = 0
            while pos + 9 <= len(buf):
                op, length = struct.unpack_from("<BQ", buf, pos)
                yield op, buf[pos + 9:pos + 9 + length]
                pos += 9 + length

        for op, pos, body in _mcap_records(f, 8, summary_start or footer, where):
            if op == _OP_DATA_END:
                break
            inner = [(op, body)]
            if op == _OP_CHUNK:
                if pos in skip_offsets:
                    continue
                inner = records(memoryview(_decompress_chunk(body, f"{where}: chunk at byte offset {pos}")[1]))
            for iop, rec in inner:
                if iop == _OP_CHANNEL:
                    by_id[struct.unpack_from("<H", rec, 0)[0]] = _mcap_str(rec, 4)[0]
                elif iop == _OP_MESSAGE:
                    cid, _, log_time, _ = struct.unpack_from("<HIQQ", rec, 0)
                    conn = channels_wanted.get(by_id.get(cid))
                    if conn is not None:
                        yield conn, log_time, bytes(rec[22:])


@lru_cache(maxsize=1)
def typestore():
    """ROS 2 message types (Kilted definitions; the message hashes equal Humble's and Jazzy's)."""
    return get_typestore(Stores.ROS2_KILTED)


# --------------------------------------------------------------------------------------------------
# numpy <-> rosbags messages
# --------------------------------------------------------------------------------------------------

def _header(stamp_ns: int, frame: str = CAMERA_FRAME):
    t = typestore().types
    stamp = t["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 10**9),
                                             nanosec=int(stamp_ns % 10**9))
    return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame)


def stamp_ns_of(msg) -> int:
    return int(msg.header.stamp.sec) * 10**9 + int(msg.header.stamp.nanosec)


def array_to_image_msg(array: np.ndarray, stamp_ns: int, encoding: str | None = None):
    """(H, W, 3) uint8 RGB -> ``rgb8``, (H, W) uint8 -> ``mono8`` sensor_msgs/Image."""
    a = np.ascontiguousarray(array)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"expected (H, W, 3) or (H, W) uint8, got {a.shape} {a.dtype}")
    enc = encoding or ("rgb8" if a.ndim == 3 else "mono8")
    h, w = a.shape[:2]
    channels = 3 if a.ndim == 3 else 1
    return typestore().types[IMAGE_T](header=_header(stamp_ns), height=h, width=w, encoding=enc,
                                      is_bigendian=0, step=w * channels,
                                      data=a.reshape(-1).view(np.uint8))


def rgb_to_compressed_msg(rgb: np.ndarray, stamp_ns: int, fmt: str = "jpeg", quality: int = 95):
    """RGB -> sensor_msgs/CompressedImage as image_transport's ``compressed`` plugin writes it."""
    ext = {"jpeg": ".jpg", "png": ".png"}[fmt]
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if fmt == "jpeg" else []
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ValueError(f"{fmt} encoding failed")
    return typestore().types[COMPRESSED_T](header=_header(stamp_ns),
                                           format=f"rgb8; {fmt} compressed bgr8",
                                           data=buf.reshape(-1))


def camera_info_msg(camera: dict, height: int, width: int, stamp_ns: int):
    """Pinhole CameraInfo (no distortion) from a camera dict with fx, fy, cx, cy."""
    t = typestore().types
    fx, fy, cx, cy = (float(camera[k]) for k in ("fx", "fy", "cx", "cy"))
    k = np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64)
    p = np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], np.float64)
    roi = t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0,
                                                do_rectify=False)
    return t[INFO_T](header=_header(stamp_ns), height=height, width=width,
                     distortion_model="plumb_bob", d=np.zeros(5), k=k,
                     r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0, roi=roi)


def camera_info_to_dict(msg) -> dict:
    k = np.asarray(msg.k, np.float64)
    return {"fx": float(k[0]), "fy": float(k[4]), "cx": float(k[2]), "cy": float(k[5]),
            "height": int(msg.height), "width": int(msg.width)}


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

@dataclass
class BagSummary:
    path: Path
    storage: str
    frames: int
    labelled: int
    topics: dict


def write_bag(records: Iterable, out: str | Path, storage: str = "mcap", compressed: bool = False,
              compressed_format: str = "jpeg", rate_hz: float = 10.0,
              start_ns: int = DEFAULT_START_NS, version: int = 8, dataset: str = "",
              progress: bool = False, total: int | None = None) -> BagSummary:
    """Write ``records`` (``csl_ros.data.loaders.Record``) as a rosbag2 at ``rate_hz``.

    ``version`` 8 (Jazzy) is read by Jazzy and later; 9 is Kilted's. On any error the partial bag
    folder is removed and the error re-raised.
    """
    if storage not in FORMATS:
        raise ValueError(f"unknown bag format {storage!r}; choose one of {FORMATS}")
    if not rate_hz > 0:
        raise ValueError(f"rate must be > 0 Hz, got {rate_hz}")
    if compressed_format not in ("jpeg", "png"):
        raise ValueError(f"compressed format must be jpeg or png, got {compressed_format!r}")
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} exists already; rosbag2 writers never overwrite")
    ts = typestore()
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(out, version=version, storage_plugin=plugin)
    period_ns = int(round(1e9 / rate_hz))
    counts = {"frames": 0, "labelled": 0}
    conns: dict[str, object] = {}
    first_camera: dict | None = None

    def conn(topic: str, msgtype: str):
        if topic not in conns:
            conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
        return conns[topic]

    it = records
    if progress:
        it = tqdm(records, total=total, desc=f"bag {out.name}", unit="frame")
    try:
        writer.open()
        for i, rec in enumerate(it):
            stamp = start_ns + i * period_ns
            rgb = np.asarray(rec.rgb)
            if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
                raise ValueError(f"frame {rec.frame_id}: image must be (H, W, 3) uint8, "
                                 f"got {rgb.shape} {rgb.dtype}")
            h, w = rgb.shape[:2]
            if compressed:
                msg = rgb_to_compressed_msg(rgb, stamp, compressed_format)
                writer.write(conn(COMPRESSED_TOPIC, COMPRESSED_T), stamp,
                             ts.serialize_cdr(msg, COMPRESSED_T))
            else:
                writer.write(conn(IMAGE_TOPIC, IMAGE_T), stamp,
                             ts.serialize_cdr(array_to_image_msg(rgb, stamp), IMAGE_T))
            if rec.camera is not None:
                first_camera = first_camera or dict(rec.camera)
                writer.write(conn(INFO_TOPIC, INFO_T), stamp,
                             ts.serialize_cdr(camera_info_msg(rec.camera, h, w, stamp), INFO_T))
            if rec.label is not None:
                lab = np.asarray(rec.label)
                if lab.shape != (h, w) or lab.dtype != np.uint8:
                    raise ValueError(f"frame {rec.frame_id}: label must be ({h}, {w}) uint8, "
                                     f"got {lab.shape} {lab.dtype}")
                writer.write(conn(LABEL_TOPIC, IMAGE_T), stamp,
                             ts.serialize_cdr(array_to_image_msg(lab, stamp), IMAGE_T))
                counts["labelled"] += 1
            writer.write(conn(FRAME_ID_TOPIC, STRING_T), stamp,
                         ts.serialize_cdr(ts.types[STRING_T](data=str(rec.frame_id)), STRING_T))
            obstacles = getattr(rec, "obstacles", None)
            if rec.camera is not None or obstacles is not None:
                truth = json.dumps({"camera": rec.camera, "obstacles": obstacles})
                writer.write(conn(GROUND_TRUTH_TOPIC, STRING_T), stamp,
                             ts.serialize_cdr(ts.types[STRING_T](data=truth), STRING_T))
            ids = getattr(rec, "obstacle_ids", None)
            if ids is not None:
                writer.write(conn(OBSTACLE_IDS_TOPIC, IMAGE_T), stamp,
                             ts.serialize_cdr(array_to_image_msg(np.asarray(ids, np.uint8), stamp), IMAGE_T))
            counts["frames"] += 1
        if counts["frames"] == 0:
            raise ValueError("the dataset yielded no frames; nothing to write")
        writer.set_custom_data("csl_ros.dataset", dataset)
        writer.set_custom_data("csl_ros.rate_hz", repr(float(rate_hz)))
        if first_camera is not None:
            writer.set_custom_data("csl_ros.camera", json.dumps(first_camera))
        writer.close()
        for f in sorted(out.glob("*.mcap")):
            add_mcap_crcs(f)
    except BaseException as exc:
        try:
            writer.abort()
        finally:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, WriterError):
            raise BagError(f"{out}: {exc}") from exc
        raise
    return BagSummary(out, storage, counts["frames"], counts["labelled"],
                      {t: c.msgtype for t, c in conns.items()})


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------

@dataclass
class BagFrame:
    stamp_ns: int
    frame_id: str | None
    image: np.ndarray                 # (H, W, 3) uint8 RGB
    labels: np.ndarray | None         # (H, W) uint8 0/1/255, None when the bag has none
    camera_info: dict | None
    ground_truth: dict | None = None  # /eval/ground_truth: {"camera": ..., "obstacles": ...}
    obstacle_ids: np.ndarray | None = None   # /eval/obstacle_ids (H, W) uint8


@dataclass
class BagReadStats:
    images: int = 0
    labels: int = 0
    matched: int = 0                   # frames with image and labels of the same stamp
    unmatched_labels: int = 0          # labels without an image of the same stamp
    notes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)   # --salvage: every damaged chunk / record left out
    chunks_verified: int = 0           # MCAP chunks whose CRC was checked
    chunks_without_crc: int = 0        # MCAP chunks written without a CRC (not verifiable)


def _storage_files(path: Path) -> list[Path]:
    return sorted([*path.glob("*.mcap"), *path.glob("*.db3"), *path.glob("*.zstd")])


def _describe(path: Path) -> str:
    files = _storage_files(path) if path.is_dir() else [path]
    return ", ".join(str(f) for f in files) or str(path)


class BagReader:
    """Frames of a bag: grouped by header stamp, images decoded, errors naming the file.

    ``frames()`` yields :class:`BagFrame` in stamp order; ``stats`` counts what was matched. A frame
    is complete once the log time passes its stamp by ``lag_ns`` (0 for converted bags, where all
    messages of a frame are logged at its stamp).
    """

    def __init__(self, path: str | Path, image_topic: str | None = None,
                 labels_topic: str = LABEL_TOPIC, lag_ns: int = 0, salvage: bool = False):
        self.lag_ns = int(lag_ns)   # for bags whose log times trail the stamps (recorded live)
        self.path = Path(path)
        self.salvage = bool(salvage)
        if not self.path.exists():
            raise FileNotFoundError(f"bag not found: {self.path}")
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            raise BagError(f"{self.path}: not a rosbag2 folder (metadata.yaml is missing)")
        self.stats = BagReadStats()
        # CRCs first: a damaged file is named precisely before rosbags reads a byte of it.
        self._mcap_files = [f for f in _storage_files(self.path) if f.suffix == ".mcap"] \
            if self.path.is_dir() else ([self.path] if self.path.suffix == ".mcap" else [])
        self._damaged_chunks: dict[Path, set[int]] = {}
        for f in self._mcap_files:
            check = check_mcap(f, salvage=self.salvage)
            self.stats.chunks_verified += check.chunks - check.chunks_without_crc
            self.stats.chunks_without_crc += check.chunks_without_crc
            self.stats.skipped += check.damaged
            if check.damaged:
                self._damaged_chunks[f] = {d["byte_offset"] for d in check.damaged}
        if self.stats.chunks_without_crc:
            self.stats.notes.append(f"{self.stats.chunks_without_crc} MCAP chunk(s) carry no CRC "
                                    f"(written by an older tool): their integrity was not verified")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except Exception as exc:  # rosbags raises ReaderError, sqlite3/zstd/yaml errors, ...
            raise BagError(f"cannot open bag {_describe(self.path)}: {exc} (the file is truncated, "
                           f"corrupt or not a rosbag2)") from exc
        topics = {c.topic: c.msgtype for c in self._reader.connections}
        self.topics = topics
        if image_topic is None:
            image_topic = next((t for t in (IMAGE_TOPIC, COMPRESSED_TOPIC) if t in topics), None)
            if image_topic is None:
                self.close()
                raise BagError(f"{self.path}: no {IMAGE_TOPIC} or {COMPRESSED_TOPIC} topic; the "
                               f"bag has {sorted(topics)}")
        elif image_topic not in topics:
            self.close()
            raise BagError(f"{self.path}: no topic {image_topic}; the bag has {sorted(topics)}")
        if topics[image_topic] not in (IMAGE_T, COMPRESSED_T):
            self.close()
            raise BagError(f"{self.path}: {image_topic} is {topics[image_topic]}, not an image")
        self.image_topic, self.labels_topic = image_topic, labels_topic
        storage = getattr(self._reader, "storage", None)
        self.custom = dict(getattr(getattr(storage, "metadata", None), "custom", None) or {})

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    def close(self) -> None:
        reader, self._reader = getattr(self, "_reader", None), None
        if reader is not None:
            try:
                reader.close()
            except Exception:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _decode(self, conn, raw, t_ns):
        where = f"{_describe(self.path)}: {conn.topic} at {t_ns} ns"
        try:
            return typestore().deserialize_cdr(raw, conn.msgtype)
        except Exception as exc:
            raise BagError(f"{where}: corrupt message ({exc})") from exc

    def skip(self, topic: str, t_ns: int, reason: str) -> None:
        """Record one damaged record left out under ``salvage``."""
        self.stats.skipped.append({"file": _describe(self.path), "topic": topic, "log_time_ns": t_ns,
                                   "reason": reason})

    def skip_or_raise(self, exc: BagError, topic: str, t_ns: int) -> None:
        """Under ``salvage`` list the damaged record ``exc`` reports (it is left out); else raise ``exc``."""
        if not self.salvage:
            raise exc
        self.skip(topic, t_ns, str(exc).rsplit(": ", 1)[-1])

    def decode(self, conn, raw, t_ns):
        """The message, or None when it is damaged and ``salvage`` skips it (listed in stats)."""
        try:
            return self._decode(conn, raw, t_ns)
        except BagError as exc:
            self.skip_or_raise(exc, conn.topic, t_ns)
            return None

    def messages(self, topics) -> Iterator[tuple]:
        """(connection, log time ns, raw CDR) of ``topics``; under ``salvage`` damaged MCAP chunks are
        left out (read in file order by :func:`mcap_messages`)."""
        conns = [c for c in self._reader.connections if c.topic in set(topics)]
        if not (self.salvage and self.stats.skipped and self._mcap_files):
            yield from self._reader.messages(connections=conns)
            return
        wanted = {c.topic: c for c in conns}
        for f in self._mcap_files:
            yield from mcap_messages(f, wanted, self._damaged_chunks.get(f, set()))

    def frames(self) -> Iterator[BagFrame]:
        wanted = {self.image_topic, self.labels_topic, INFO_TOPIC, FRAME_ID_TOPIC, GROUND_TRUTH_TOPIC,
                  OBSTACLE_IDS_TOPIC}
        pending: dict[int, dict] = {}

        def flush(upto: int | None):
            for stamp in sorted(k for k in pending if upto is None or k < upto):
                yield from self._emit(stamp, pending.pop(stamp))

        last_t = None
        try:
            for conn, t_ns, raw in self.messages(wanted):
                msg = self.decode(conn, raw, t_ns)
                if msg is None:
                    continue
                stamp = stamp_ns_of(msg) if conn.topic not in (FRAME_ID_TOPIC, GROUND_TRUTH_TOPIC) else t_ns
                slot = pending.setdefault(stamp, {})
                slot[conn.topic] = (msg, t_ns)
                if last_t is not None and t_ns > last_t:
                    yield from flush(t_ns - self.lag_ns)
                last_t = t_ns
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"{_describe(self.path)}: unreadable after {self.stats.images} "
                           f"frame(s) ({type(exc).__name__}: {exc}); the file is truncated or "
                           f"corrupt") from exc
        yield from flush(None)

    def _emit(self, stamp: int, slot: dict) -> Iterator[BagFrame]:
        where = f"{_describe(self.path)}: frame at {stamp} ns"
        if self.labels_topic in slot:
            self.stats.labels += 1
        if self.image_topic not in slot:
            if self.labels_topic in slot:
                self.stats.unmatched_labels += 1
            return
        msg, t_img = slot[self.image_topic]
        try:
            try:
                decode = compressed_msg_to_rgb if msg.__msgtype__ == COMPRESSED_T else image_msg_to_rgb
                image = np.array(decode(msg))   # a copy: the decoder's views point into the message
            except ImageFormatError as exc:
                raise BagError(f"{where}: {exc}") from None
        except BagError as exc:
            self.skip_or_raise(exc, self.image_topic, t_img)
            if self.labels_topic in slot:
                self.stats.unmatched_labels += 1     # its labelled frame is dropped, and counted
            return
        labels = None
        if self.labels_topic in slot:
            lab_msg, t_lab = slot[self.labels_topic]
            try:
                labels = _mono8(lab_msg, where, "labels", image.shape[:2])
            except BagError as exc:
                self.skip_or_raise(exc, self.labels_topic, t_lab)
                self.stats.unmatched_labels += 1     # the frame is dropped, and counted
                return
        if labels is not None:
            self.stats.matched += 1
        info = camera_info_to_dict(slot[INFO_TOPIC][0]) if INFO_TOPIC in slot else None
        fid = slot[FRAME_ID_TOPIC][0].data if FRAME_ID_TOPIC in slot else None
        truth = ids = None
        try:   # distances for the driving metrics; under salvage a damaged one only loses them
            if GROUND_TRUTH_TOPIC in slot:
                try:
                    truth = json.loads(slot[GROUND_TRUTH_TOPIC][0].data)
                except ValueError as exc:
                    raise BagError(f"{where}: {GROUND_TRUTH_TOPIC} is not valid JSON ({exc})") from exc
                if not isinstance(truth, dict):
                    raise BagError(f"{where}: {GROUND_TRUTH_TOPIC} must be a JSON object")
            if OBSTACLE_IDS_TOPIC in slot:
                ids = _mono8(slot[OBSTACLE_IDS_TOPIC][0], where, OBSTACLE_IDS_TOPIC, image.shape[:2])
        except BagError as exc:
            self.skip_or_raise(exc, GROUND_TRUTH_TOPIC, stamp)
            truth = ids = None
        self.stats.images += 1
        yield BagFrame(stamp, fid, image, labels, info, truth, ids)


def _mono8(msg, where: str, what: str, image_shape: tuple[int, int]) -> np.ndarray:
    """A mono8 image of the bag (labels, obstacle ids) as (H, W) uint8, decoded by the image codec; its
    size must be the camera image's."""
    try:
        array = single_channel_msg_to_array(msg, where)
    except ImageFormatError as exc:
        raise BagError(str(exc)) from None
    if array.dtype != np.uint8:
        raise BagError(f"{where}: {what} must be mono8, got {msg.encoding!r}")
    if array.shape != tuple(image_shape):
        raise BagError(f"{where}: {what} size {array.shape} differs from the image's {tuple(image_shape)}")
    return array


def read_bag(path: str | Path, image_topic: str | None = None,
             labels_topic: str = LABEL_TOPIC, salvage: bool = False) -> Iterator[BagFrame]:
    """Iterate the frames of a bag (see :class:`BagReader`)."""
    with BagReader(path, image_topic, labels_topic, salvage=salvage) as reader:
        yield from reader.frames()
