"""The one configuration mechanism (csl_ros.settings) behind every csl_ros configuration, and the one
trainer's schedule."""
from __future__ import annotations

import dataclasses

import pytest

from csl_ros.config import DetectorConfig, NodeConfig
from csl_ros.settings import apply_overrides, load_yaml_config, parse_set_args, setting


@dataclasses.dataclass
class Inner:
    size: tuple = setting((2, 3), "HxW")
    rate: float = setting(0.5, "a rate", range=(0.0, 1.0))


@dataclasses.dataclass
class Outer:
    name: str = setting("a", "a name", choices=("a", "b"))
    inner: Inner = dataclasses.field(default_factory=Inner)
    other: Inner = dataclasses.field(default_factory=Inner)


def test_flat_nested_tuple_and_errors(tmp_path):
    cfg = apply_overrides(Outer(), {"name": "b", "inner.size": "64x128", "other.rate": "0.25"})
    assert cfg.name == "b" and cfg.inner.size == (64, 128) and cfg.other.rate == 0.25
    assert Outer().inner.size == (2, 3)  # the defaults are never mutated
    for values, message in [({"inner.rate": 2}, r"inner.rate=2.0 is outside \[0.0, 1.0\]"),
                            ({"rate": 0.1}, "ambiguous"), ({"name": "c"}, "name='c' is not one of a, b"),
                            ({"inner.size": "1x2x3"}, "inner.size: expected 2 values"),
                            ({"nosuch.rate": 1}, "unknown config section 'nosuch'")]:
        with pytest.raises(ValueError, match=message):
            apply_overrides(Outer(), values)
    path = tmp_path / "c.yaml"
    path.write_text("name: b\ninner:\n  size: [5, 6]\n")
    loaded = load_yaml_config(Outer(), path, parse_set_args(["other.size=7,8"]))
    assert (loaded.name, loaded.inner.size, loaded.other.size) == ("b", (5, 6), (7, 8))
    path.write_text("inner:\n  colour: 1\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown config key inner.colour"):
        load_yaml_config(Outer(), path)


def test_every_configuration_uses_it():
    from csl_ros.model.config import ModelConfig, get_preset
    from csl_ros.training.config import TrainConfig
    from csl_ros.training.segmenter import SegmenterTrainConfig

    assert apply_overrides(DetectorConfig(), {"min_instance_area": "7"}).min_instance_area == 7
    assert apply_overrides(NodeConfig(), {"publish_color": "off"}).publish_color is False
    assert get_preset("r18_fast", num_queries="20").num_queries == 20  # coerced like any setting
    with pytest.raises(ValueError, match="ModelConfig.backbone_norm='gn' is not one of bn, frozen_bn"):
        ModelConfig(backbone_norm="gn")
    assert ModelConfig.from_dict({"pixel_mean": [1, 2, 3]}).pixel_mean == (1.0, 2.0, 3.0)
    train = apply_overrides(TrainConfig(), {"warmup_steps": "5", "run.threads": 2})
    assert train.optim.warmup_steps == 5 and train.run.threads == 2
    with pytest.raises(ValueError, match=r"optim.warmup_steps=-1 is outside"):
        apply_overrides(TrainConfig(), {"optim.warmup_steps": -1})
    seg = apply_overrides(SegmenterTrainConfig(), {"crop_size": "64x96", "steps": "3"})
    assert seg.crop_size == (64, 96) and seg.steps == 3
    with pytest.raises(ValueError, match="save_dtype='int4' is not one of float16, float32"):
        apply_overrides(SegmenterTrainConfig(), {"save_dtype": "int4"})
    # the mechanism, the schema and the registries' names cost no torch import
    import subprocess
    import sys

    code = ("import sys, csl_ros.settings, csl_ros.config, csl_ros.training.config, csl_ros.data.registry; "
            "print('torch' in sys.modules, len(csl_ros.config.TEACHERS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "7"]


def test_poly_schedule_with_warmup():
    import torch

    from csl_ros.training.loop import poly_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = poly_scheduler(opt, max_steps=10, power=0.9, warmup_steps=3)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [1 / 3, 2 / 3, 1.0] + [(1 - s / 10) ** 0.9 for s in range(3, 10)]
    assert lrs == pytest.approx(expected)
    opt = torch.optim.SGD([param], lr=1.0)
    plain = poly_scheduler(opt, max_steps=10, power=0.9)
    assert isinstance(plain, torch.optim.lr_scheduler.PolynomialLR)  # the student's, unchanged
