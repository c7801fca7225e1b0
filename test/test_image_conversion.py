"""Image message conversion (cv_bridge equivalent) on real sensor_msgs types and on bad input."""
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
sensor_msgs = pytest.importorskip("sensor_msgs.msg")

from csl_ros.image_codec import (  # noqa: E402
    ImageFormatError, compressed_msg_to_rgb, fill_image_msg, image_msg_to_rgb, single_channel_msg_to_array)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)


def make_msg(array, encoding, step=None, bigendian=False):
    msg = sensor_msgs.Image()
    a = np.ascontiguousarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if bigendian:
        a = a.astype(a.dtype.newbyteorder(">"))
    row = a.shape[1] * a.shape[2] * a.dtype.itemsize
    step = step or row
    rows = a.reshape(a.shape[0], row // a.dtype.itemsize).view(np.uint8).reshape(a.shape[0], row)
    padded = np.zeros((a.shape[0], step), np.uint8)
    padded[:, :row] = rows
    msg.height, msg.width, msg.encoding = a.shape[0], a.shape[1], encoding
    msg.step, msg.is_bigendian, msg.data = step, int(bigendian), padded.tobytes()
    return msg


@pytest.mark.parametrize("encoding,make", [
    ("rgb8", lambda x: x), ("bgr8", lambda x: x[..., ::-1]),
    ("rgba8", lambda x: np.dstack([x, np.full(x.shape[:2], 255, np.uint8)])),
    ("bgra8", lambda x: np.dstack([x[..., ::-1], np.zeros(x.shape[:2], np.uint8)])),
])
def test_colour_encodings_round_trip(encoding, make):
    out = image_msg_to_rgb(make_msg(make(RGB), encoding))
    assert out.dtype == np.uint8 and out.shape == RGB.shape
    np.testing.assert_array_equal(out, RGB)


def test_row_padding_is_skipped_and_input_is_not_copied():
    msg = make_msg(RGB, "rgb8", step=7 * 3 + 5)
    out = image_msg_to_rgb(msg)
    np.testing.assert_array_equal(out, RGB)
    assert not out.flags.owndata  # a view over the message buffer


def test_mono_encodings():
    gray = RGB[..., 0]
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg(gray, "mono8")), np.dstack([gray] * 3))
    g16 = gray.astype(np.uint16) * 256 + 17
    for be in (False, True):
        out = image_msg_to_rgb(make_msg(g16, "mono16", bigendian=be))
        np.testing.assert_array_equal(out[..., 1], gray)


def test_float_image_and_nan_rejected():
    f = np.linspace(0, 1, 42, dtype=np.float32).reshape(6, 7)
    out = image_msg_to_rgb(make_msg(f, "32FC1"))
    assert out[0, 0, 0] == 0 and out[-1, -1, 2] == 255
    f[2, 3] = np.nan
    with pytest.raises(ImageFormatError, match="NaN"):
        image_msg_to_rgb(make_msg(f, "32FC1"))


def test_yuyv_and_uyvy_known_values():
    # BT.601 studio range: Y=128, U=V=128 is grey (128-16)*255/219 = 130; Y=235 is white.
    yuyv = np.zeros((2, 4, 2), np.uint8)
    yuyv[..., 0] = [[128, 128, 235, 235], [16, 16, 128, 128]]
    yuyv[..., 1] = 128
    out = image_msg_to_rgb(make_msg(yuyv, "yuyv"))
    np.testing.assert_allclose(out[0, 0], [130, 130, 130], atol=1)
    np.testing.assert_allclose(out[0, 3], [255, 255, 255], atol=1)
    np.testing.assert_allclose(out[1, 0], [0, 0, 0], atol=1)
    uyvy = yuyv[..., ::-1].copy()  # U Y V Y ordering of the same pixels
    np.testing.assert_array_equal(image_msg_to_rgb(make_msg(uyvy, "uyvy")), out)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "encoding", "weird16"), "unsupported encoding"),
    (lambda m: setattr(m, "step", 5), "step 5 is smaller"),
    (lambda m: setattr(m, "data", bytes(10)), "needs"),
    (lambda m: (setattr(m, "height", 0), setattr(m, "width", 0)), "zero-size"),
    (lambda m: (setattr(m, "height", 100000), setattr(m, "width", 100000)), "absurd"),
    (lambda m: setattr(m, "encoding", "mono8"), None),  # wrong encoding but consistent size: converts
])
def test_bad_headers_raise_clear_errors(mutate, match):
    msg = make_msg(RGB, "rgb8")
    mutate(msg)
    if match is None:
        assert image_msg_to_rgb(msg).shape == (6, 7, 3)
        return
    with pytest.raises(ImageFormatError, match=match):
        image_msg_to_rgb(msg)


def test_wrong_encoding_with_inconsistent_size_is_caught():
    msg = make_msg(RGB[..., 0], "mono8")
    msg.encoding = "rgb8"  # claims 3 bytes per pixel, step only covers one
    with pytest.raises(ImageFormatError, match="step"):
        image_msg_to_rgb(msg)


def test_compressed_decode_and_corrupt():
    ok, jpg = cv2.imencode(".png", RGB[..., ::-1])
    msg = sensor_msgs.CompressedImage(format="png", data=jpg.tobytes())
    np.testing.assert_array_equal(compressed_msg_to_rgb(msg), RGB)
    bad = sensor_msgs.CompressedImage(format="jpeg", data=b"\xff\xd8garbage" * 10)
    with pytest.raises(ImageFormatError, match="could not be decoded"):
        compressed_msg_to_rgb(bad)
    with pytest.raises(ImageFormatError, match="empty"):
        compressed_msg_to_rgb(sensor_msgs.CompressedImage(format="jpeg"))


def test_fill_image_msg_round_trip():
    score = RNG.random((6, 7), dtype=np.float32)
    msg = fill_image_msg(sensor_msgs.Image(), score, "32FC1")
    assert msg.step == 7 * 4 and msg.encoding == "32FC1"
    back = np.frombuffer(bytes(msg.data), np.float32).reshape(6, 7)
    np.testing.assert_array_equal(back, score)
    ids = RNG.integers(0, 60000, (6, 7)).astype(np.uint16)
    msg = fill_image_msg(sensor_msgs.Image(), ids, "16UC1")
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint16).reshape(6, 7), ids)
    with pytest.raises(ImageFormatError, match="does not match"):
        fill_image_msg(sensor_msgs.Image(), ids, "32FC1")


@pytest.mark.parametrize("encoding,dtype", [("32FC1", np.float32), ("64FC1", np.float64), ("16UC1", np.uint16),
                                            ("mono16", np.uint16), ("mono8", np.uint8), ("8UC1", np.uint8)])
@pytest.mark.parametrize("bigendian", [False, True])
def test_single_channel_maps_keep_their_values_and_dtype(encoding, dtype, bigendian):
    """Score maps, instance ids and labels (the node's outputs, the bag's labels): padded rows and
    big-endian data come back as a writable native (H, W) array of the encoding's dtype."""
    a = (RNG.random((5, 9)) * 200).astype(dtype)
    out = single_channel_msg_to_array(make_msg(a, encoding, step=9 * np.dtype(dtype).itemsize + 8, bigendian=bigendian),
                                      "/x/anomaly_score at 5 ns")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, a)


def test_single_channel_refuses_colour_and_short_data_naming_where():
    with pytest.raises(ImageFormatError, match=r"^/x/anomaly_score at 5 ns: expected a single-channel image.*'rgb8'"):
        single_channel_msg_to_array(make_msg(RGB, "rgb8"), "/x/anomaly_score at 5 ns")
    short = make_msg(np.zeros((4, 4), np.float32), "32FC1")
    short.data = short.data[:10]
    with pytest.raises(ImageFormatError, match=r"^bag: .*bytes"):
        single_channel_msg_to_array(short, "bag")
