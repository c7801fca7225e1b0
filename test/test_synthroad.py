"""synthroad: determinism, label consistency, instance ids, dataset writers and the synth CLI."""
from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from csl_ros.data.synthroad import (CameraModel, Frame, OBSTACLE_KINDS, TRAIN_ID_NAMES, rare_road_paint_seeds,
                                    render_frame, render_sequence)
from csl_ros.data.synthroad.camera import camera_to_world_rotation
from csl_ros.data.synthroad.labels import THING_TRAIN_IDS, TRAIN_TO_LABEL_ID

SIZE = (128, 256)
SEEDS = range(6)


@pytest.fixture(scope="module")
def obstacle_frames():
    return [render_frame(s, SIZE, "obstacle") for s in SEEDS]


@pytest.fixture(scope="module")
def anomaly_frames():
    return [render_frame(s, SIZE, "anomaly") for s in SEEDS]


def _same(a: Frame, b: Frame) -> bool:
    return (np.array_equal(a.image, b.image) and np.array_equal(a.train_ids, b.train_ids)
            and np.array_equal(a.instance_ids, b.instance_ids) and np.array_equal(a.ood_labels, b.ood_labels)
            and a.camera == b.camera and a.obstacles == b.obstacles)


def test_deterministic_per_seed():
    a = render_frame(11, SIZE, "obstacle")
    b = render_frame(11, SIZE, "obstacle")
    assert _same(a, b)
    c = render_frame(12, SIZE, "obstacle")
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.train_ids, c.train_ids)
    s1 = list(render_sequence(4, 3, SIZE, "anomaly"))
    s2 = list(render_sequence(4, 3, SIZE, "anomaly"))
    assert all(_same(x, y) for x, y in zip(s1, s2))
    assert not np.array_equal(s1[0].image, s1[2].image)   # the ego moves


def test_output_does_not_depend_on_process_caches():
    from csl_ros.data.synthroad import textures
    a = render_frame(13, SIZE, "anomaly")
    textures._CACHE.clear()
    textures.facade.cache_clear()
    render_frame(14, SIZE, "none")          # refill the texture caches from another scene first
    assert _same(a, render_frame(13, SIZE, "anomaly"))


def test_types_shapes_and_label_ranges(obstacle_frames, anomaly_frames):
    assert len(TRAIN_ID_NAMES) == 19
    for f in obstacle_frames + anomaly_frames + [render_frame(3, (96, 160), "none")]:
        h, w = f.image.shape[:2]
        assert f.image.dtype == np.uint8 and f.image.shape == (h, w, 3)
        assert f.train_ids.dtype == np.uint8 and f.train_ids.shape == (h, w)
        assert f.instance_ids.dtype == np.int32 and f.instance_ids.shape == (h, w)
        assert f.ood_labels.dtype == np.uint8 and f.ood_labels.shape == (h, w)
        ids = set(np.unique(f.train_ids).tolist())
        assert ids <= set(range(19)) | {255}
        assert {0, 10} <= ids                      # road and sky are always there
        assert set(np.unique(f.ood_labels).tolist()) <= {0, 1, 255}
        assert np.allclose(f.camera.K, [[f.camera.fx, 0, f.camera.cx], [0, f.camera.fy, f.camera.cy], [0, 0, 1]])
        assert 1.2 <= f.camera.height_m <= 1.7


def test_none_frames_have_no_ood():
    f = render_frame(2, SIZE, "none")
    assert f.obstacles == [] and not f.ood_labels.any()
    assert not ((f.train_ids == 255) & (f.instance_ids > 0)).any()


def test_obstacle_track_void_is_exactly_off_road(obstacle_frames):
    n_obstacles = 0
    for f in obstacle_frames:
        obst_ids = [o["instance_id"] for o in f.obstacles]
        is_obst = np.isin(f.instance_ids, obst_ids) & (f.train_ids == 255)
        assert np.array_equal(f.ood_labels == 1, is_obst)
        assert np.array_equal(f.ood_labels == 255, (f.train_ids != 0) & ~is_obst)
        assert np.array_equal(f.ood_labels == 0, f.train_ids == 0)
        n_obstacles += len(obst_ids)
        for o in f.obstacles:   # obstacle-track obstacles stand on the road: road around their base
            m = f.instance_ids == o["instance_id"]
            rows, cols = np.nonzero(m)
            below = f.train_ids[min(rows.max() + 2, f.train_ids.shape[0] - 1), cols.min():cols.max() + 1]
            assert (below == 0).mean() > 0.5 or rows.max() >= f.train_ids.shape[0] - 3
    assert n_obstacles >= len(obstacle_frames)


def test_anomaly_track_labels(anomaly_frames):
    for f in anomaly_frames:
        obst_ids = [o["instance_id"] for o in f.obstacles]
        assert obst_ids, "anomaly frames contain at least one anomaly"
        is_obst = np.isin(f.instance_ids, obst_ids) & (f.train_ids == 255)
        assert np.array_equal(f.ood_labels == 1, is_obst)
        assert not (f.ood_labels == 255).any()


def _rays(cam: CameraModel, u, v):
    """World-level ray directions (X right, Y up, Z forward on the ground) through pixels."""
    r = camera_to_world_rotation(0.0, math.radians(cam.pitch_deg), math.radians(cam.roll_deg))
    d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones_like(u, dtype=float)], -1)
    return d @ r.T


def _project_ground(cam: CameraModel, forward, lateral):
    r = camera_to_world_rotation(0.0, math.radians(cam.pitch_deg), math.radians(cam.roll_deg))
    p = np.stack([lateral, np.full_like(forward, -cam.height_m), forward], -1) @ r   # optical frame
    return cam.fx * p[..., 0] / p[..., 2] + cam.cx, cam.fy * p[..., 1] / p[..., 2] + cam.cy


def test_every_ood_pixel_lies_on_the_ground():
    checked = 0
    frames = [render_frame(s, (256, 512), mode) for s in range(50, 55) for mode in ("obstacle", "anomaly")]
    for f in frames:
        for o in f.obstacles:
            rows, cols = np.nonzero(f.instance_ids == o["instance_id"])
            assert len(rows) == o["pixels"] > 0
            # below the horizon: every ray through the obstacle points down
            assert (_rays(f.camera, cols.astype(float), rows.astype(float))[:, 1] < 0).all()
            assert o["height_m"] < f.camera.height_m
            # the lowest obstacle row is the image of a ground point of its footprint
            r = 0.5 * math.hypot(o["width_m"], o["depth_m"])
            ang = np.linspace(0, 2 * np.pi, 32)
            _, vv = _project_ground(f.camera, o["distance_m"] + r * np.cos(ang), o["lateral_m"] + r * np.sin(ang))
            assert vv.min() - 1.0 <= rows.max() <= vv.max() + 1.0, (o, rows.max(), vv.min(), vv.max())
            assert 5.0 - r <= o["distance_m"] <= 60.0 + r
            assert 0.1 - 1e-6 <= max(o["width_m"], o["depth_m"], o["height_m"]) <= 1.5 + 1e-6
            checked += 1
    assert checked >= 12


def test_instance_ids_one_class_and_one_object(obstacle_frames):
    frames = obstacle_frames + [render_frame(s, SIZE, "none") for s in (20, 21, 22)]
    for f in frames:
        ids = f.instance_ids
        assert ids.min() >= 0
        # stuff classes carry no instance id
        stuff = ~np.isin(f.train_ids, list(THING_TRAIN_IDS) + [255])
        assert not ids[stuff].any()
        for uid in np.unique(ids[ids > 0]).tolist():
            m = ids == uid
            classes = np.unique(f.train_ids[m])
            assert len(classes) == 1, (uid, classes)
            assert int(classes[0]) in THING_TRAIN_IDS | {255}
        obst = [o["instance_id"] for o in f.obstacles]
        assert len(set(obst)) == len(obst)
        void_ids = set(np.unique(ids[(f.train_ids == 255) & (ids > 0)]).tolist())
        assert void_ids == set(obst)
        for o in f.obstacles:       # each obstacle is one connected blob
            n, _ = cv2.connectedComponents((ids == o["instance_id"]).astype(np.uint8), connectivity=8)
            assert n == 2, o
            assert o["kind"] in OBSTACLE_KINDS


def test_decal_parts_paint_only_over_their_sprite():
    """Spots on a debris polygon are decals: a spot past the body's outline must not float beside it
    as a second ground-truth component of the same obstacle."""
    from csl_ros.data.synthroad.camera import View
    from csl_ros.data.synthroad.raster import Part, Raster

    cam = CameraModel(fx=200.0, fy=200.0, cx=128.0, cy=64.0, height_m=1.5, pitch_deg=0.0, roll_deg=0.0)
    view = View(cam, np.array([0.0, 1.5, 0.0]), 0.0, (128, 256))
    anchor = np.array([0.0, 0.0, 8.0])
    body = np.array([(-0.1, 0.0), (0.1, 0.0), (0.0, 1.0)])            # a thin upright triangle
    spot = np.array([(0.3 + 0.15 * math.cos(a), 0.5 + 0.15 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 8)])
    half = np.array([(-0.2, 0.4), (0.2, 0.4), (0.2, 0.6), (-0.2, 0.6)])   # straddles the body's outline

    def draw(parts):
        rs = Raster(view)
        assert rs.sprite(anchor, parts)
        return rs

    alone = draw([Part(body, (0.2, 0.6, 0.6), 255, 7)])
    outside = draw([Part(body, (0.2, 0.6, 0.6), 255, 7), Part(spot, (0.9, 0.1, 0.1), 255, 7, kind="decal")])
    assert np.array_equal(outside.inst, alone.inst) and np.array_equal(outside.img, alone.img)
    across = draw([Part(body, (0.2, 0.6, 0.6), 255, 7), Part(half, (0.9, 0.1, 0.1), 255, 7, kind="decal")])
    assert np.array_equal(across.inst, alone.inst)
    red = (across.img[..., 0] > 0.5) & (across.img[..., 1] < 0.3)
    assert red.any() and not (red & (alone.inst == 0)).any()
    floating = draw([Part(body, (0.2, 0.6, 0.6), 255, 7), Part(spot, (0.9, 0.1, 0.1), 255, 7)])
    assert cv2.connectedComponents((floating.inst == 7).astype(np.uint8), connectivity=8)[0] == 3


def test_debris_polygon_with_spots_is_one_component():
    # drive 40,000,005 (a tuning drive of bench/driving.py), first frame: a thin debris polygon whose
    # spots, drawn as plain polygons, floated beside it as two more components of obstacle 159
    f = next(render_sequence(40_000_005, 1, (512, 1024), "obstacle", speed_mps=10.0, fps=10.0))
    assert f.obstacles
    for o in f.obstacles:
        n, _ = cv2.connectedComponents((f.instance_ids == o["instance_id"]).astype(np.uint8), connectivity=8)
        assert n == 2, o


def test_sequence_is_a_drive_past_static_obstacles():
    frames = list(render_sequence(9, 6, SIZE, "obstacle", speed_mps=10.0, fps=10.0))
    assert [f.index for f in frames] == list(range(6))
    assert all(f.seed == 9 for f in frames)
    seen = {}
    for f in frames:
        for o in f.obstacles:
            seen.setdefault(o["instance_id"], []).append((f.index, o["distance_m"]))
    steps = [b[1] - a[1] for track in seen.values() for a, b in zip(track, track[1:]) if b[0] == a[0] + 1]
    assert steps, "some obstacle stays in view for two frames"
    assert np.allclose(steps, -1.0, atol=0.15)     # 10 m/s at 10 frames/s: 1 m closer per frame


def test_bad_arguments():
    with pytest.raises(ValueError, match="obstacles"):
        render_frame(0, SIZE, "rocks")
    with pytest.raises(ValueError, match="size"):
        render_frame(0, (8, 8))
    with pytest.raises(ValueError, match="n_frames"):
        next(render_sequence(0, 0, SIZE))


# -- writers -------------------------------------------------------------------------------------
def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _read(path, flags=cv2.IMREAD_UNCHANGED):
    img = cv2.imread(str(path), flags)
    assert img is not None, path
    return img


def test_cityscapes_writer(tmp_path):
    from csl_ros.data.writers import CITYSCAPES_RE, CityscapesWriter
    w = CityscapesWriter(tmp_path, "val")
    frames = [render_frame(s, SIZE, "none") for s in (30, 31)]
    for k, f in enumerate(frames):
        w.write(f, seq=k)
    files = _tree(tmp_path)
    assert len(files) == 10
    assert all(CITYSCAPES_RE.match(p) for p in files), files
    assert "leftImg8bit/val/synthroad/synthroad_000001_000019_leftImg8bit.png" in files
    stem = tmp_path / "gtFine/val/synthroad/synthroad_000000_000019"
    f = frames[0]
    assert np.array_equal(_read(f"{stem}_gtFine_labelTrainIds.png"), f.train_ids)
    lut = np.zeros(256, np.uint8)
    lut[:19] = TRAIN_TO_LABEL_ID
    label_ids = _read(f"{stem}_gtFine_labelIds.png")
    assert np.array_equal(label_ids, lut[f.train_ids])
    inst = _read(f"{stem}_gtFine_instanceIds.png")
    assert inst.dtype == np.uint16
    things = inst >= 1000
    assert things.any()
    assert np.array_equal(inst[things] // 1000, label_ids[things])
    assert np.array_equal(inst[~things], label_ids[~things])
    assert np.array_equal(np.isin(f.train_ids, list(THING_TRAIN_IDS)), things)
    assert len(np.unique(inst[things])) == len(np.unique(f.instance_ids[f.instance_ids > 0]))
    img = _read(tmp_path / "leftImg8bit/val/synthroad/synthroad_000000_000019_leftImg8bit.png", cv2.IMREAD_COLOR)
    assert np.array_equal(img[..., ::-1], f.image)
    cam = json.loads((tmp_path / "camera/val/synthroad/synthroad_000000_000019_camera.json").read_text())
    assert cam["intrinsic"]["fx"] == pytest.approx(f.camera.fx)
    assert cam["extrinsic"]["z"] == pytest.approx(f.camera.height_m)
    assert cam["extrinsic"]["pitch"] == pytest.approx(math.radians(f.camera.pitch_deg))


@pytest.mark.parametrize("track", ["obstacle", "anomaly"])
def test_smiyc_writer(tmp_path, track):
    from csl_ros.data.writers import SMIYC_RE, SmiycWriter
    w = SmiycWriter(tmp_path, track, prefix="validation")
    frames = [render_frame(s, SIZE, track) for s in (40, 41)]
    for k, f in enumerate(frames):
        w.write(f, k + 1)
    files = _tree(tmp_path)
    assert len(files) == 4 and all(SMIYC_RE.match(p) for p in files), files
    if track == "anomaly":
        img_path = tmp_path / "dataset_AnomalyTrack/images/validation0001.jpg"
        lab_path = tmp_path / "dataset_AnomalyTrack/labels_masks/validation0001_labels_semantic.png"
    else:
        img_path = tmp_path / "dataset_ObstacleTrack/images/validation_000001.webp"
        lab_path = tmp_path / "dataset_ObstacleTrack/labels_masks/validation_000001_labels_semantic.png"
        assert img_path.name.split("_")[0] == "validation"
    assert np.array_equal(_read(lab_path), frames[0].ood_labels)
    img = _read(img_path, cv2.IMREAD_COLOR)
    assert img.shape == frames[0].image.shape
    assert np.abs(img[..., ::-1].astype(int) - frames[0].image).mean() < 6   # lossy, but the same picture


def test_smiyc_writer_rejects_unknown_track(tmp_path):
    from csl_ros.data.writers import SmiycWriter
    with pytest.raises(ValueError, match="track"):
        SmiycWriter(tmp_path, "none")


def test_lostandfound_writer(tmp_path):
    from csl_ros.data.writers import LAF_OBSTACLE_IDS, LAF_RE, LostAndFoundWriter
    w = LostAndFoundWriter(tmp_path, "test")
    frames = list(render_sequence(5, 3, SIZE, "obstacle"))
    for f in frames:
        w.write(f, scene_no=4, scene="Synthroad_5", seq=0, frame_no=f.index)
    files = _tree(tmp_path)
    assert len(files) == 9 and all(LAF_RE.match(p) for p in files), files
    stem = "04_Synthroad_5/04_Synthroad_5_000000_000002"
    lab = _read(tmp_path / f"gtCoarse/test/{stem}_gtCoarse_labelIds.png")
    f = frames[2]
    assert np.array_equal(lab == 1, f.train_ids == 0)
    assert np.array_equal(lab >= 2, f.ood_labels == 1)
    assert set(np.unique(lab[lab >= 2]).tolist()) <= set(LAF_OBSTACLE_IDS.values())
    assert (lab[(f.ood_labels == 255)] == 0).all()
    cam = json.loads((tmp_path / f"camera/test/{stem}_camera.json").read_text())
    assert set(cam["extrinsic"]) == {"baseline", "pitch", "roll", "x", "y", "yaw", "z"}
    assert set(cam["intrinsic"]) == {"fx", "fy", "u0", "v0"}


def test_writers_reject_names_that_break_the_layout(tmp_path):
    from csl_ros.data.writers import CityscapesWriter, LostAndFoundWriter
    with pytest.raises(ValueError, match="city"):
        CityscapesWriter(tmp_path, "val", city="new_york")
    with pytest.raises(ValueError, match="scene"):
        LostAndFoundWriter(tmp_path, "test").scene_dir(1, "bad/name")


# -- CLI and previews ----------------------------------------------------------------------------
def test_synth_cli_writes_a_layout_and_preview(tmp_path, capsys):
    from csl_ros.cli import main
    out = tmp_path / "laf"
    rc = main(["synth", "--layout", "laf", "--split", "train", "--frames", "3", "--seq-len", "2", "--size", "64x128",
               "--out", str(out), "--seed", "3", "--preview", str(tmp_path / "sheet.png")])
    assert rc == 0
    imgs = sorted((out / "leftImg8bit/train").rglob("*_leftImg8bit.png"))
    assert [p.parent.name for p in imgs] == ["01_Synthroad_3", "01_Synthroad_3", "02_Synthroad_4"]
    sheet = _read(tmp_path / "sheet.png", cv2.IMREAD_COLOR)
    assert sheet.shape[0] > 64 and sheet.shape[1] > 128
    assert "wrote 3 laf frames" in capsys.readouterr().out


def test_synth_cli_bad_input_is_one_error_line(tmp_path, capsys):
    from csl_ros.cli import main
    with pytest.raises(SystemExit) as exit_info:  # argparse's usage error
        main(["synth", "--layout", "smiyc", "--split", "validation", "--frames", "1", "--size", "64by128",
              "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "HxW" in capsys.readouterr().err
    rc = main(["synth", "--layout", "smiyc", "--split", "validation", "--frames", "1", "--obstacles", "none",
               "--out", str(tmp_path)])
    assert rc == 2


def test_contact_sheet_and_overlay(obstacle_frames):
    from csl_ros.data.preview import contact_sheet, label_overlay
    f = obstacle_frames[0]
    ov = label_overlay(f)
    assert ov.shape == f.image.shape and ov.dtype == np.uint8
    assert (ov[f.ood_labels == 1] == (0, 255, 255)).all()
    sheet = contact_sheet(obstacle_frames[:5], cols=3, tile_width=128)
    from csl_ros.visualize import strip_height

    width = 4 + 3 * (128 + 4)
    assert sheet.shape == (4 + 2 * (2 * 64 + 4) + strip_height(width), width, 3)
    legend = sheet[-strip_height(width):]
    assert (legend == (0, 255, 255)).all(-1).sum() > 20        # the OOD swatch in the legend below the grid
    with pytest.raises(ValueError):
        contact_sheet([])


def _yellow_share_of_road(frame: Frame) -> float:
    """Share of the road pixels painted yellow: red well above blue (grey asphalt and white paint have
    them about equal)."""
    img = frame.image.astype(np.float32)
    road = frame.train_ids == TRAIN_ID_NAMES.index("road")
    yellow = road & (img[..., 2] < 0.55 * img[..., 0]) & (img[..., 0] > 60)
    return float(yellow.sum() / max(1, road.sum()))


def test_rare_road_paint_seeds_are_the_frames_with_zebra_crossings_or_yellow_markings():
    from csl_ros.data.synthroad.render import OBJECT_RANGE, has_rare_road_paint
    from csl_ros.data.synthroad.world import YELLOW_PAINT, World

    seeds = rare_road_paint_seeds(500_000, 12)
    assert len(seeds) == 12 and seeds == sorted(set(seeds)) and seeds[0] >= 500_000
    skipped = sorted(set(range(500_000, seeds[-1])) - set(seeds))
    assert skipped and not any(has_rare_road_paint(s) for s in skipped)
    # what the flag means: a zebra crossing within 40 m ahead or yellow markings in the frame's world
    yellow, zebra = [], []
    for s in seeds:
        w = World(s, s_range=(-40.0, OBJECT_RANGE), ego_speed=0.0)
        (yellow if w.markings and np.allclose(w.mark_color, YELLOW_PAINT) else zebra).append(s)
        if s in zebra:
            assert w.zebra_tab[w.idx(0.0):w.idx(40.0) + 1].any()
    assert yellow and zebra
    # and the rendered road shows it: yellow paint in the yellow worlds, none in the skipped frames
    assert all(_yellow_share_of_road(render_frame(s, SIZE)) > 0.01 for s in yellow)
    assert all(_yellow_share_of_road(render_frame(s, SIZE)) < 0.001 for s in skipped[:4])
    # rare: about 15 % of the frames (zebra 10 %, yellow 5 %), so 400 of them cost ~2,700 world builds
    share = np.mean([has_rare_road_paint(s) for s in range(600_000, 600_200)])
    assert 0.05 < share < 0.3
