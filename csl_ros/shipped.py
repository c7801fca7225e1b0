"""The models shipped in ``models/`` (synthroad-trained defaults) and their SHA-256 manifest.

``models/manifest.json`` maps a model name to its file, kind and SHA-256. Every load of a shipped file
goes through :func:`resolve_shipped`, which verifies the checksum, so a truncated or tampered file is
refused with its name instead of giving silently wrong scores.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from csl_ros.model.integrity import sha256_file

MANIFEST = "manifest.json"


def models_dir() -> Path:
    """Where the shipped models are: $CSL_ROS_MODELS_DIR, the installed share/csl_ros/models
    (colcon or pip), or the source tree's models/ (editable installs)."""
    candidates = []
    if os.environ.get("CSL_ROS_MODELS_DIR"):
        candidates.append(Path(os.environ["CSL_ROS_MODELS_DIR"]))
    try:  # a sourced ROS 2 workspace
        from ament_index_python.packages import get_package_share_directory  # optional: a colcon install

        candidates.append(Path(get_package_share_directory("csl_ros")) / "models")
    except Exception:  # not in a ROS environment, or the package is not indexed
        pass
    candidates.append(Path(__file__).resolve().parents[1] / "models")
    candidates.append(Path(sys.prefix) / "share" / "csl_ros" / "models")
    for c in candidates:
        if (c / MANIFEST).is_file():
            return c
    raise FileNotFoundError("no shipped models found (looked for manifest.json in: "
                            + ", ".join(str(c) for c in candidates) + ")")


def read_manifest(directory: Path | None = None) -> dict:
    directory = directory or models_dir()
    path = directory / MANIFEST
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt manifest ({exc})") from None


def resolve_shipped(name: str, directory: Path | None = None) -> Path:
    """Path of shipped model ``name`` after checking its SHA-256 against the manifest."""
    directory = directory or models_dir()
    manifest = read_manifest(directory)
    entry = manifest.get("models", {}).get(name)
    if entry is None:
        raise FileNotFoundError(f"no shipped model {name!r} in {directory / MANIFEST} (have: "
                                + ", ".join(sorted(manifest.get("models", {}))) + ")")
    path = directory / entry["file"]
    if not path.is_file():
        raise FileNotFoundError(f"shipped model file {path} is missing")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(f"shipped model file {path} fails its checksum (sha256 {digest[:12]}..., "
                         f"manifest says {entry['sha256'][:12]}...): the file is corrupt or was modified")
    return path


def register_shipped(name: str, path: Path, kind: str, directory: Path, **extra) -> dict:
    """Add or update a manifest entry (used by the training commands that produce shipped models)."""
    manifest_path = directory / MANIFEST
    manifest = read_manifest(directory) if manifest_path.is_file() else {"models": {}}
    entry = {"file": os.path.relpath(path, directory), "kind": kind, "sha256": sha256_file(path),
             "bytes": Path(path).stat().st_size, **extra}
    manifest.setdefault("models", {})[name] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry
