"""The one image codec: sensor_msgs/Image and CompressedImage <-> numpy, equivalent to cv_bridge for
the supported encodings (ROS 2 cv_bridge is not installable from PyPI).

Messages are duck-typed (``height``, ``width``, ``encoding``, ``step``, ``is_bigendian``, ``data``), so
this module needs no rclpy and works with rclpy messages and rosbags messages alike: the node
(csl_ros.ros), the bag reader and the evaluator (csl_ros.eval) all decode with it, which is why it is a
ROS-free module at the package's base (beside config.py), which every layer may import. Conversion is
vectorised numpy; input views are zero-copy (``np.frombuffer`` over the message buffer) and only the
colour conversion allocates. Every malformed message raises :class:`ImageFormatError` (a
``ValueError``) that says what is wrong, so the node can count it and keep going.
"""
from __future__ import annotations

import cv2
import numpy as np

# encoding -> (channels, numpy dtype)
_ENCODINGS = {
    "rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "rgba8": (4, np.uint8), "bgra8": (4, np.uint8),
    "mono8": (1, np.uint8), "8UC1": (1, np.uint8), "8UC3": (3, np.uint8), "8UC4": (4, np.uint8),
    "mono16": (1, np.uint16), "16UC1": (1, np.uint16),
    "32FC1": (1, np.float32), "64FC1": (1, np.float64),
    # packed 4:2:2, 2 bytes per pixel
    "yuv422": (2, np.uint8), "uyvy": (2, np.uint8),
    "yuv422_yuy2": (2, np.uint8), "yuyv": (2, np.uint8),
}
SUPPORTED_ENCODINGS = tuple(_ENCODINGS)
# what single_channel_msg_to_array reads: score maps (32FC1), instance ids (16UC1), labels (mono8)
SINGLE_CHANNEL_ENCODINGS = ("32FC1", "64FC1", "16UC1", "mono16", "mono8", "8UC1")
_PACKED_422 = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")

# Refuse headers that claim more than this many pixels before touching the data (a 100000x100000
# header with a few bytes of data must not allocate anything).
MAX_PIXELS = 16384 * 16384


class ImageFormatError(ValueError):
    """A camera message that cannot be converted; the text says why."""


def _view(msg) -> tuple[np.ndarray, str]:
    """Validate the header against the buffer and return an (H, W, C) zero-copy view."""
    enc = str(msg.encoding)
    if enc not in _ENCODINGS:
        raise ImageFormatError(f"unsupported encoding {enc!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageFormatError(f"zero-size image ({h}x{w}, HxW)")
    if h * w > MAX_PIXELS:
        raise ImageFormatError(f"absurd image size {h}x{w} (HxW, more than {MAX_PIXELS} pixels)")
    channels, dtype = _ENCODINGS[enc]
    if enc in _PACKED_422 and w % 2:  # one U/V pair per two pixels: an odd width has no valid layout
        raise ImageFormatError(f"packed 4:2:2 encoding {enc} needs an even width, got {w}")
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise ImageFormatError(f"step {step} is smaller than width*bytes_per_pixel = {row_bytes} ({enc})")
    if step % itemsize:
        raise ImageFormatError(f"step {step} is not a multiple of the {enc} element size {itemsize}")
    buf = memoryview(msg.data).cast("B") if not isinstance(msg.data, (bytes, bytearray)) else msg.data
    need = h * step
    if len(buf) < need:
        raise ImageFormatError(f"data has {len(buf)} bytes, height*step needs {need} ({h}x{w} HxW, step {step})")
    flat = np.frombuffer(buf, dtype=np.uint8, count=need)
    rows = flat.reshape(h, step)[:, :row_bytes]
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<") if itemsize > 1 else np.dtype(dtype)
    arr = rows.view(dt) if rows.flags.c_contiguous or itemsize == 1 else np.ascontiguousarray(rows).view(dt)
    return arr.reshape(h, w, channels), enc


def _yuv422_to_rgb(packed: np.ndarray, order: str) -> np.ndarray:
    code = cv2.COLOR_YUV2RGB_UYVY if order == "uyvy" else cv2.COLOR_YUV2RGB_YUY2
    return cv2.cvtColor(np.ascontiguousarray(packed), code)


def image_msg_to_rgb(msg) -> np.ndarray:
    """Convert a sensor_msgs/Image to an (H, W, 3) uint8 RGB array.

    mono16 is scaled by 1/256; 32FC1 and 64FC1 are taken as intensity in [0, 1] (NaN/inf rejected).
    """
    arr, enc = _view(msg)
    if enc in ("rgb8", "8UC3"):
        return arr
    if enc == "bgr8":
        return arr[..., ::-1]
    if enc in ("rgba8", "8UC4"):
        return arr[..., :3]
    if enc == "bgra8":
        return arr[..., 2::-1]
    if enc in ("mono8", "8UC1"):
        return np.repeat(arr, 3, axis=2)
    if enc in ("mono16", "16UC1"):
        return np.repeat((arr >> 8).astype(np.uint8), 3, axis=2)
    if enc in ("32FC1", "64FC1"):
        if not np.isfinite(arr).all():
            raise ImageFormatError(f"{enc} image contains NaN or inf")
        return np.repeat((np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), 3, axis=2)
    # 4:2:2 packed: cv2 wants (H, W, 2)
    return _yuv422_to_rgb(arr, "uyvy" if enc in ("yuv422", "uyvy") else "yuyv")


def single_channel_msg_to_array(msg, where: str = "") -> np.ndarray:
    """A single-channel sensor_msgs/Image (32FC1 scores, 16UC1 instance ids, mono8 labels; see
    ``SINGLE_CHANNEL_ENCODINGS``) -> a writable 2-D array of its own dtype, native byte order.
    ``where`` (a bag, topic and time) starts the message of the :class:`ImageFormatError`."""
    enc = str(msg.encoding)
    if enc not in SINGLE_CHANNEL_ENCODINGS:
        raise ImageFormatError(f"{where}: expected a single-channel image (32FC1, 16UC1, mono8), got {enc!r}")
    try:
        arr, _ = _view(msg)
    except ImageFormatError as exc:
        raise ImageFormatError(f"{where}: {exc}") from None
    return arr[..., 0].astype(arr.dtype.newbyteorder("="))   # a copy: the message buffer is not kept


def _u16be(b: bytes, i: int) -> int:
    return int.from_bytes(b[i:i + 2], "big")


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first SOFn segment of a JPEG stream (markers walked, data not decoded)."""
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # stand-alone markers have no length
            i += 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return _u16be(data, i + 7), _u16be(data, i + 5)
        i += 2 + _u16be(data, i + 2)
    return None


def compressed_image_size(data: bytes) -> tuple[str, int, int] | None:
    """(container, width, height) read from the header of a JPEG, PNG, WebP, BMP or GIF stream without
    decoding it; None when the container is not one of these or its header is cut short."""
    head = bytes(data[:64])  # data: bytes or a memoryview (the JPEG walk reads past the first segments)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and len(head) >= 24:
        return "png", int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"\xff\xd8":
        size = _jpeg_size(bytes(data))
        return None if size is None else ("jpeg", *size)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":
            return "webp", int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return "webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return "webp", int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        return None
    if head[:2] == b"BM" and len(head) >= 26:
        return ("bmp", abs(int.from_bytes(head[18:22], "little", signed=True)),
                abs(int.from_bytes(head[22:26], "little", signed=True)))
    if head[:4] == b"GIF8" and len(head) >= 10:
        return "gif", int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    return None


def compressed_msg_to_rgb(msg) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg/png/webp/bmp/gif) to (H, W, 3) uint8 RGB.

    The decoded size is read from the container's header first and checked against ``MAX_PIXELS``,
    so a small file claiming a huge image is refused before anything is allocated."""
    data = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, (bytes, bytearray))
                         else msg.data, dtype=np.uint8)
    if data.size == 0:
        raise ImageFormatError(f"empty CompressedImage (format {msg.format!r})")
    header = compressed_image_size(memoryview(data))
    if header is None:
        raise ImageFormatError(f"CompressedImage could not be decoded: no readable jpeg, png, webp, bmp or gif "
                               f"header (format {msg.format!r}, {data.size} bytes)")
    container, w, h = header
    if w <= 0 or h <= 0:
        raise ImageFormatError(f"zero-size image ({w}x{h}) in the {container} header")
    if w * h > MAX_PIXELS:
        raise ImageFormatError(f"absurd image size {w}x{h} in the {container} header (more than {MAX_PIXELS} "
                               "pixels); not decoded")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises for some corrupt streams instead of returning None
        raise ImageFormatError(f"CompressedImage could not be decoded (format {msg.format!r}, {data.size} "
                               f"bytes): {str(exc).strip().splitlines()[-1]}") from None
    if img is None or img.size == 0:
        raise ImageFormatError(f"CompressedImage could not be decoded (format {msg.format!r}, "
                               f"{data.size} bytes)")
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2).astype(np.uint8, copy=False)
    if img.dtype != np.uint8:
        img = (img >> 8).astype(np.uint8)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def fill_image_msg(msg, array: np.ndarray, encoding: str):
    """Fill an (empty) sensor_msgs/Image ``msg`` from ``array`` and return it.

    ``array`` must already have the dtype and channel count of ``encoding`` (e.g. float32 for 32FC1,
    uint16 for 16UC1, uint8 (H, W, 3) BGR for bgr8). Data is handed over as bytes: assigning bytes to
    an rclpy uint8[] field is ~30x faster than assigning a numpy array.
    """
    if encoding not in _ENCODINGS:
        raise ImageFormatError(f"unsupported output encoding {encoding!r}")
    channels, dtype = _ENCODINGS[encoding]
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype != dtype or a.shape[2] != channels:
        raise ImageFormatError(f"array {a.dtype} with {a.shape[2]} channels does not match {encoding}")
    a = np.ascontiguousarray(a.astype(a.dtype.newbyteorder("<"), copy=False))
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(a.shape[1] * channels * a.dtype.itemsize)
    msg.data = a.tobytes()
    return msg
