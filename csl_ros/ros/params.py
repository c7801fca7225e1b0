"""The node's ROS parameters, derived from the one configuration schema (csl_ros.config), and the
validation of run-time parameter changes. ROS-free: the node turns :class:`ParamSpec` into
``ParameterDescriptor`` and calls :func:`plan_parameter_changes` from its set-parameters callback."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from csl_ros.config import DetectorConfig, NodeConfig, apply_overrides, field_type


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: a schema field of DetectorConfig ("detector") or NodeConfig ("node")."""

    name: str
    owner: str
    type: type
    default: Any
    description: str
    range: tuple[float, float] | None
    choices: tuple | None
    reload: bool

    @property
    def additional_constraints(self) -> str:
        parts = []
        if self.choices is not None:
            parts.append("one of: " + ", ".join(map(str, self.choices)))
        if self.reload:
            parts.append("needs a model reload: changeable only while the node is not active")
        else:
            parts.append("changeable at run time (takes effect on the next frame)")
        return "; ".join(parts)


def parameter_specs() -> list[ParamSpec]:
    """Every schema field marked ``ros=True``, in schema order, with the schema's default."""
    specs = []
    for owner, cls in (("detector", DetectorConfig), ("node", NodeConfig)):
        defaults = cls()
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not meta.get("ros", True):
                continue
            specs.append(ParamSpec(
                name=f.name, owner=owner, type=field_type(f), default=getattr(defaults, f.name),
                description=meta["help"], range=meta.get("range"),
                choices=tuple(meta["choices"]) if meta.get("choices") is not None else None,
                reload=bool(meta.get("reload"))))
    return specs


def reload_message(name: str) -> str:
    return f"{name} needs a model reload: deactivate/cleanup the node first"


@dataclass
class ParameterPlan:
    """The outcome of a valid parameter change."""

    detector_config: DetectorConfig
    node_config: NodeConfig
    runtime_detector_changes: dict[str, Any]  # for Detector.update(), next frame
    reload_changes: list[str]                 # reload fields changed (node not active)


def plan_parameter_changes(det_cfg: DetectorConfig, node_cfg: NodeConfig, changes: Mapping[str, Any], *,
                           active: bool) -> ParameterPlan:
    """Validate ``changes`` (parameter name -> value) against the schema and the node's state.

    Raises ``ValueError`` with the reason for an unknown name, a wrong type, a value outside its
    range or choices (never clamped), or a reload field while ``active``. Names the schema does not
    own (``use_sim_time``) are ignored.
    """
    specs = {s.name: s for s in parameter_specs()}
    det_changes, node_changes, reload_changes = {}, {}, []
    for name, value in changes.items():
        if name == "use_sim_time":
            continue
        spec = specs.get(name)
        if spec is None:
            raise ValueError(f"unknown parameter {name!r}")
        (det_changes if spec.owner == "detector" else node_changes)[name] = value
    # Coerces and checks range/choices with the schema's own words first (an invalid value is
    # reported as invalid whatever the state); raises ValueError.
    new_det = apply_overrides(det_cfg, det_changes)
    new_node = apply_overrides(node_cfg, node_changes)
    runtime = {}
    for name in list(det_changes) + list(node_changes):
        spec = specs[name]
        old = getattr(det_cfg if spec.owner == "detector" else node_cfg, name)
        new = getattr(new_det if spec.owner == "detector" else new_node, name)
        if old == new:
            continue
        if spec.reload:
            if active:
                raise ValueError(reload_message(name))
            reload_changes.append(name)
        elif spec.owner == "detector":
            runtime[name] = new
    return ParameterPlan(new_det, new_node, runtime, reload_changes)
