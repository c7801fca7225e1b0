"""The one configuration mechanism of csl_ros: dataclasses whose fields carry their help, valid range
and choices as metadata, plus coercion, overrides and YAML loading for all of them.

Used by the detector and node schema (``csl_ros.config``), the student architecture
(``csl_ros.model.config.ModelConfig``), the training config (``csl_ros.training.config``) and the
segmenter training config:

* :func:`setting` declares a field (``help``, ``range``, ``choices``, ``device``, any extra metadata);
* :func:`coerce_value` turns a YAML / command-line / ROS value into the field's type, refusing
  anything lossy, and :func:`check_value` checks range and choices (never clamps);
* :func:`apply_overrides` applies ``{"key": value}`` to a copy; a config made of sections (fields that
  are dataclasses) takes ``section.key`` or a ``key`` that exists in one section only;
* :func:`parse_set_args` reads ``--set key=value`` items, :func:`read_yaml_mapping` a YAML file and
  :func:`load_yaml_config` both onto a config.

Standard library only (PyYAML is imported when a file is read), so every layer may use it.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import field
from typing import Any, Iterable, Mapping

# Torch device strings accepted by every setting marked ``device`` (checked before torch sees them).
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, range=None, choices=None,
            device: bool = False, default_factory: Any = dataclasses.MISSING, **extra: Any):
    """A configuration field: ``range`` = (lo, hi) inclusive, ``choices`` = the valid values (a tuple
    or a live registry view), ``device``: the value must be a torch device string."""
    meta = {"help": help, "range": range, "choices": choices, "device": device, **extra}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def device_error(name: str, value: str) -> str | None:
    """Why ``value`` is not a device string, or None."""
    if isinstance(value, str) and DEVICE_PATTERN.fullmatch(value):
        return None
    return f"{name}={value!r} is not a device: auto, cpu, cuda, cuda:N, mps"


def coerce_value(value: Any, typ: type, name: str) -> Any:
    """Convert a YAML / command-line / ROS value to the field type ``typ`` (bool, int, float, str);
    reject anything lossy with a ValueError naming ``name``. Used by every configuration in csl_ros."""
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ValueError(f"{name}: expected a boolean, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"{name}: expected a string, got {value!r}")
    return value


_TYPE_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "tuple": tuple}


def field_type(f: dataclasses.Field, current: Any = None) -> type:
    """The type of field ``f`` (annotations are strings under ``from __future__ import annotations``);
    the type of ``current`` when the annotation is not a plain one."""
    t = f.type
    if isinstance(t, str):
        t = _TYPE_NAMES.get(t)
    if not isinstance(t, type):
        t = type(current) if current is not None else str
    return t


def coerce_field(f: dataclasses.Field, value: Any, current: Any, name: str) -> Any:
    """:func:`coerce_value` to the type of field ``f``; a tuple field takes a list or ``"AxB"`` /
    ``"a,b"`` and coerces each item to the type of the current item."""
    if isinstance(current, tuple):
        items = [v for v in re.split(r"[x,]", value) if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(current):
            raise ValueError(f"{name}: expected {len(current)} values, got {value!r}")
        return tuple(coerce_value(v, type(c), name) for v, c in zip(items, current))
    return coerce_value(value, field_type(f, current), name)


def check_value(f: dataclasses.Field, value: Any, name: str | None = None) -> str | None:
    """Return why ``value`` is invalid for field ``f`` (named ``name``, default the field's), or None.
    Never clamps."""
    name = name or f.name
    meta = f.metadata
    if meta.get("device"):
        return device_error(name, value)
    if meta.get("choices") is not None and value not in meta["choices"]:
        return f"{name}={value!r} is not one of {', '.join(map(str, meta['choices']))}"
    if meta.get("range") is not None:
        lo, hi = meta["range"]
        if not (lo <= value <= hi):
            return f"{name}={value!r} is outside [{lo}, {hi}]"
    return None


def sections(cfg) -> dict[str, Any]:
    """The fields of ``cfg`` that are dataclasses themselves (``section.key`` overrides)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if dataclasses.is_dataclass(getattr(cfg, f.name))}


def validation_errors(cfg, prefix: str = "") -> list[str]:
    """Why each field of ``cfg`` (and of its sections, named ``section.key``) is invalid."""
    errors = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            errors += validation_errors(value, f"{prefix}{f.name}.")
            continue
        err = check_value(f, value, prefix + f.name)
        if err:
            errors.append(err)
    return errors


def _locate(cfg, key: str, source: str | None) -> tuple[str, dataclasses.Field] | None:
    """(section name or "", field) that ``key`` names in ``cfg``; ValueError naming an unknown key."""
    where = f"{source}: " if source else ""
    secs = sections(cfg)
    top = {f.name: f for f in dataclasses.fields(cfg) if f.name not in secs}
    if key in top:
        return "", top[key]
    if not secs:
        raise ValueError(f"{where}unknown setting {key!r} for {type(cfg).__name__}; known: "
                         + ", ".join(sorted(top)))
    if "." in key:
        section, name = key.split(".", 1)
        if section not in secs:
            raise ValueError(f"{where}unknown config section {section!r} in {key!r}; known sections: "
                             f"{', '.join(secs)}")
    else:
        owners = [s for s, sec in secs.items() if key in {f.name for f in dataclasses.fields(sec)}]
        if len(owners) != 1:
            known = sorted(f"{s}.{f.name}" for s, sec in secs.items() for f in dataclasses.fields(sec))
            why = "is ambiguous (in " + ", ".join(owners) + ")" if owners else "is unknown"
            raise ValueError(f"{where}config key {key!r} {why}; known keys: {', '.join(known)}")
        section, name = owners[0], key
    fields = {f.name: f for f in dataclasses.fields(secs[section])}
    if name not in fields:
        raise ValueError(f"{where}unknown config key {section}.{name}; known keys of {section}: "
                         f"{', '.join(sorted(fields))}")
    return section, fields[name]


def apply_overrides(cfg, values: Mapping[str, Any], *, strict: bool = True, source: str | None = None):
    """A copy of ``cfg`` with ``values`` applied, each coerced to its field's type and checked against
    its range / choices (a ValueError naming the key, and ``source`` when given). Keys: a field name,
    ``section.key``, or a key that exists in exactly one section. ``strict=False`` skips unknown keys.
    The config's own ``validate()`` (cross-field rules) runs on the result when it has one."""
    updates: dict[str, dict[str, Any]] = {}
    for key, raw in values.items():
        try:
            section, f = _locate(cfg, key, source)
        except ValueError:
            if strict:
                raise
            continue
        owner = getattr(cfg, section) if section else cfg
        name = f"{section}.{f.name}" if section else f.name
        value = coerce_field(f, raw, getattr(owner, f.name), name)
        err = check_value(f, value, name)
        if err:
            raise ValueError(f"{source}: {err}" if source else err)
        updates.setdefault(section, {})[f.name] = value
    new_sections = {s: dataclasses.replace(sec, **updates.get(s, {})) for s, sec in sections(cfg).items()}
    out = dataclasses.replace(cfg, **updates.get("", {}), **new_sections)
    validate = getattr(out, "validate", None)
    if callable(validate):
        validate()
    return out


def parse_set_args(items: Iterable[str]) -> dict[str, str]:
    """Parse CLI ``--set key=value`` items (values stay strings; :func:`apply_overrides` coerces)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def read_yaml_mapping(path: str | os.PathLike, what: str = "YAML file") -> dict[str, Any]:
    """The top-level mapping of a YAML file (empty file: {}). A missing file, broken YAML syntax or a
    non-mapping is one error naming the file (and the line of a syntax error)."""
    import yaml  # only when a file is read: the schema itself needs no third-party package

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "r", encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def flatten_sections(data: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (one level, as the sections of a config)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[key] = value
    return flat


def load_yaml_config(cfg, path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None,
                     what: str = "config file"):
    """``cfg`` updated from the YAML file ``path`` (nested sections or flat keys), then ``overrides``."""
    if path is not None:
        cfg = apply_overrides(cfg, flatten_sections(read_yaml_mapping(path, what)), source=str(path))
    if overrides:
        cfg = apply_overrides(cfg, overrides, source="--set")
    return cfg
