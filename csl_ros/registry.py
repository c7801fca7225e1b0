"""Named registries at the extension points (teachers, backbones, datasets), in the style of
detectron2's ``Registry`` and torchvision's model builders.

A :class:`Registry` maps a name to an object (a score function, a backbone builder, a dataset
class) plus metadata (whether a score is bounded, which options a dataset takes...). Every list of
names in csl_ros (configuration choices, CLI choices, benchmark tables) is a live view of a registry,
so one registration makes a new entry valid everywhere::

    from csl_ros.teachers.registry import TEACHERS

    @TEACHERS.register("my_score", bounded=True, calibration="identity")
    def my_score(logits):
        ...

The built-in entries name their object as ``"module:attribute"`` and are imported on first use: the
names (and metadata) are known without importing torch, so the configuration schema and the CLI
stay cheap. Standard library only: any layer, ``model/`` included, may import this module.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator


@dataclass
class Entry:
    """One registered name: its object (or a lazy ``"module:attribute"`` reference) and metadata."""

    name: str
    target: Any
    meta: dict = field(default_factory=dict)

    def load(self) -> Any:
        """The registered object, importing a lazy ``"module:attribute"`` reference once."""
        if isinstance(self.target, str):
            module, _, attribute = self.target.partition(":")
            try:
                self.target = getattr(importlib.import_module(module), attribute)
            except (ImportError, AttributeError) as exc:
                raise ImportError(f"registered object {self.target!r} of {self.name!r} cannot be "
                                  f"imported: {exc}") from exc
        return self.target

    def __getattr__(self, key: str) -> Any:
        meta = self.__dict__.get("meta", {})
        if key in meta:
            return meta[key]
        raise AttributeError(f"{type(self).__name__} {self.__dict__.get('name')!r} has no {key!r}")


class Registry:
    """Name -> :class:`Entry`, in registration order. ``defaults`` are the metadata every entry has
    unless its registration says otherwise."""

    def __init__(self, kind: str, **defaults: Any):
        self.kind = kind
        self.defaults = defaults
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: Any = None, **meta: Any):
        """Register ``target`` under ``name`` (returns it), or use as a decorator without ``target``.
        A name registered twice is an error (``unregister`` it first)."""
        if target is None:
            def decorator(obj):
                self.register(name, obj, **meta)
                return obj
            return decorator
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        unknown = sorted(set(meta) - set(self.defaults))
        if unknown:
            raise ValueError(f"unknown {self.kind} registration field(s) {unknown}; known: "
                             f"{', '.join(sorted(self.defaults))}")
        self._entries[name] = Entry(name, target, {**self.defaults, **meta})
        return target

    def unregister(self, name: str) -> None:
        self.entry(name)
        del self._entries[name]

    def entry(self, name: str) -> Entry:
        """The entry of ``name``; an unknown name is a ValueError listing the registered ones."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}") from None

    def get(self, name: str) -> Any:
        """The registered object of ``name`` (imported on first use)."""
        return self.entry(name).load()

    def names(self, **where: Any) -> tuple[str, ...]:
        """Registered names, optionally only those whose metadata equal ``where``."""
        return tuple(n for n, e in self._entries.items() if all(e.meta.get(k) == v for k, v in where.items()))

    def choices(self, *, before: Iterable[str] = (), after: Iterable[str] = (),
                where: dict | None = None) -> "Choices":
        """A live view of the names (plus fixed ``before`` / ``after`` names) for ``choices=``."""
        return Choices(lambda: (*before, *self.names(**(where or {})), *after))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"


class Choices:
    """A read-only, always current sequence of names (argparse and the config schema accept it as
    ``choices``; it compares equal to the tuple of its names)."""

    def __init__(self, names: Callable[[], tuple[str, ...]]):
        self._names = names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __len__(self) -> int:
        return len(self._names())

    def __getitem__(self, index):
        return self._names()[index]

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, list, Choices)) else NotImplemented

    def __add__(self, other) -> tuple:
        return tuple(self) + tuple(other)

    def __repr__(self) -> str:
        return repr(tuple(self))
