"""The one configuration schema: YAML, CLI overrides and validation."""
import dataclasses
from pathlib import Path

import pytest

from csl_ros.config import (DetectorConfig, NodeConfig, apply_overrides, load_configs,
                            parse_set_args, read_yaml_parameters, to_yaml_dict)

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_yaml_keys_exist_in_schema_and_validate():
    params = read_yaml_parameters(ROOT / "config" / "driving.yaml")
    names = {f.name for c in (DetectorConfig, NodeConfig) for f in dataclasses.fields(c)}
    assert params and set(params) <= names
    det, node = load_configs(ROOT / "config" / "driving.yaml")
    det.validate()
    assert node.auto_activate is True


def test_every_field_is_described():
    for cls in (DetectorConfig, NodeConfig):
        for f in dataclasses.fields(cls):
            assert len(f.metadata["help"]) > 15, f.name
            assert f.name not in {g.name for g in dataclasses.fields(NodeConfig if cls is DetectorConfig
                                                                      else DetectorConfig)}


def test_overrides_are_coerced_and_validated_never_clamped():
    cfg = apply_overrides(DetectorConfig(), parse_set_args(["score_threshold=0.7", "min_instance_area=50",
                                                            "split_regions=false", "scheme=1"]))
    assert (cfg.score_threshold, cfg.min_instance_area, cfg.split_regions, cfg.scheme) == (0.7, 50, False, "1")
    with pytest.raises(ValueError, match=r"score_threshold=1.5 is outside \[0.0, 1.0\]"):
        apply_overrides(DetectorConfig(), {"score_threshold": 1.5})
    with pytest.raises(ValueError, match="teacher='foo' is not one of"):
        apply_overrides(DetectorConfig(), {"teacher": "foo"})
    with pytest.raises(ValueError, match="expected an integer"):
        apply_overrides(DetectorConfig(), {"min_instance_area": "lots"})
    with pytest.raises(ValueError, match="unknown setting 'score_treshold'"):
        apply_overrides(DetectorConfig(), {"score_treshold": 0.2})
    with pytest.raises(ValueError, match="key=value"):
        parse_set_args(["score_threshold"])


def test_yaml_round_trip_and_unknown_key(tmp_path):
    import yaml

    det = apply_overrides(DetectorConfig(), {"teacher": "energy", "score_threshold": 0.25})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(to_yaml_dict(det, NodeConfig())))
    det2, node2 = load_configs(path)
    assert det2 == det and node2 == NodeConfig()
    path.write_text("/**:\n  ros__parameters:\n    score_treshold: 0.3\n")
    with pytest.raises(ValueError, match=f"score_treshold"):
        load_configs(path)
    # plain mapping form and node-name form are accepted too
    path.write_text("teacher: msp\n")
    assert load_configs(path)[0].teacher == "msp"
    path.write_text("csl_detector:\n  ros__parameters:\n    teacher: entropy\n")
    assert load_configs(path)[0].teacher == "entropy"


def test_one_default_the_shipped_models_settings():
    """The schema's defaults are what the shipped students carry in their metadata (input size, tuned
    threshold), and driving.yaml does not override them: detect, evaluate (schema defaults), the
    node and the demo (driving.yaml) run the same settings without --config."""
    from csl_ros.config import MODEL_SETTINGS, THRESHOLDS_BY_TEACHER
    from csl_ros.model import read_checkpoint
    from csl_ros.model_settings import model_settings
    from csl_ros.shipped import resolve_shipped

    default = DetectorConfig()
    for name in ("student_ca", "student_scheme1"):
        carried = model_settings(read_checkpoint(resolve_shipped(name))[2])
        by_teacher = carried.pop(THRESHOLDS_BY_TEACHER, {})
        assert carried and all(carried[k] == getattr(default, k) for k in carried), (name, carried)
        # the default teacher's own tuned threshold, when the checkpoint has one per teacher, is the default
        assert by_teacher.get(default.teacher, default.score_threshold) == default.score_threshold, by_teacher
    det, _ = load_configs(ROOT / "config" / "driving.yaml")
    for k in (*MODEL_SETTINGS, "scheme", "teacher", "device", "backend"):
        assert getattr(det, k) == getattr(default, k), k


def test_model_settings_fill_only_what_the_user_left_at_the_default():
    from csl_ros.config import apply_model_settings

    carried = {"input_height": 512, "input_width": 1024, "score_threshold": 0.4}
    cfg, taken = apply_model_settings(DetectorConfig(), carried)
    assert (cfg.input_height, cfg.input_width, cfg.score_threshold) == (512, 1024, 0.4) and taken == carried
    mine = apply_overrides(DetectorConfig(), {"score_threshold": 0.6})
    cfg, taken = apply_model_settings(mine, carried)
    assert cfg.score_threshold == 0.6 and "score_threshold" not in taken and cfg.input_height == 512


def test_a_threshold_tuned_for_the_configured_teacher_wins():
    """A checkpoint's per-teacher thresholds (fused scores of MSP and max logit sit on other scales):
    the configured teacher's entry replaces the plain threshold, a user's threshold still wins, and a
    teacher without an entry gets the plain one."""
    from csl_ros.config import THRESHOLDS_BY_TEACHER, apply_model_settings
    from csl_ros.model_settings import model_settings

    carried = model_settings({"score_threshold": "0.4", THRESHOLDS_BY_TEACHER: '{"msp": 0.35, "energy": 0.03}'})
    assert carried[THRESHOLDS_BY_TEACHER] == {"msp": 0.35, "energy": 0.03}
    msp = apply_overrides(DetectorConfig(), {"teacher": "msp"})
    assert apply_model_settings(msp, carried)[0].score_threshold == 0.35
    energy = apply_overrides(DetectorConfig(), {"teacher": "energy"})
    cfg, taken = apply_model_settings(energy, carried)
    assert cfg.score_threshold == 0.03 and taken["score_threshold"] == 0.03
    entropy = apply_overrides(DetectorConfig(), {"teacher": "entropy"})
    assert apply_model_settings(entropy, carried)[0].score_threshold == 0.4
    mine = apply_overrides(msp, {"score_threshold": 0.6})
    assert apply_model_settings(mine, carried)[0].score_threshold == 0.6
    for bad, why in (('{"banana": 0.2}', "banana"), ('{"msp": 3}', "score_threshold"), ("[0.2]", "JSON object"),
                     ("{msp: 0.2}", "not JSON")):
        with pytest.raises(ValueError, match=why):
            model_settings({THRESHOLDS_BY_TEACHER: bad}, source="x.safetensors")


def test_device_strings_are_validated():
    for good in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        assert apply_overrides(DetectorConfig(), {"device": good}).device == good
    for bad in ("banana", "tpu", "cuda:x", "gpu"):
        with pytest.raises(ValueError, match="is not a device"):
            apply_overrides(DetectorConfig(), {"device": bad})


def test_broken_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("/**:\n  ros__parameters:\n    teacher: [sml\n")
    with pytest.raises(ValueError, match=r"p\.yaml: not valid YAML at line \d+"):
        load_configs(path)


def test_mounting_warnings_when_the_road_pitch_and_the_mount_pitch_differ():
    from csl_ros.config import DetectorConfig, NodeConfig, mounting_warnings

    # no output frame: the points stay in the optical frame, the mounting is not used
    assert mounting_warnings(DetectorConfig(camera_pitch_deg=5.0), NodeConfig(mount_pitch_deg=0.0)) == []
    # the same pitch (within the tolerance): nothing to say
    assert mounting_warnings(DetectorConfig(camera_pitch_deg=5.0),
                             NodeConfig(output_frame="base_link", mount_pitch_deg=5.3)) == []
    (w,) = mounting_warnings(DetectorConfig(camera_pitch_deg=5.0),
                             NodeConfig(output_frame="base_link", mount_pitch_deg=0.0))
    assert "camera_pitch_deg 5" in w and "mount_pitch_deg 0" in w and "base_link" in w
    assert "mount_roll_deg" not in w


def test_mounting_warnings_when_the_mount_has_roll():
    from csl_ros.config import DetectorConfig, NodeConfig, mounting_warnings

    # the road plane of the distances has no roll: a mount with roll beyond the tolerance is reported
    assert mounting_warnings(DetectorConfig(), NodeConfig(output_frame="base_link", mount_roll_deg=-0.4)) == []
    (w,) = mounting_warnings(DetectorConfig(), NodeConfig(output_frame="base_link", mount_roll_deg=3.0))
    assert "mount_roll_deg 3" in w and "base_link" in w and "camera_pitch_deg" not in w
    # both at once: one line each
    both = mounting_warnings(DetectorConfig(camera_pitch_deg=5.0),
                             NodeConfig(output_frame="base_link", mount_pitch_deg=0.0, mount_roll_deg=-2.0))
    assert len(both) == 2 and "mount_roll_deg -2" in both[1]
    # no output frame: nothing, whatever the roll
    assert mounting_warnings(DetectorConfig(), NodeConfig(mount_roll_deg=30.0)) == []
