"""Shipped-model manifest: checksum verification and clear errors."""
import json

import pytest

from csl_ros.shipped import register_shipped, resolve_shipped, sha256_file


def test_checksum_verified_and_tamper_refused(tmp_path):
    f = tmp_path / "student.safetensors"
    f.write_bytes(b"weights" * 100)
    entry = register_shipped("student_ca", f, "student", tmp_path, preset="r18_fast")
    assert entry["sha256"] == sha256_file(f) and entry["file"] == "student.safetensors"
    assert resolve_shipped("student_ca", tmp_path) == f
    f.write_bytes(b"weights" * 99 + b"WEIGHTS")
    with pytest.raises(ValueError, match=r"student\.safetensors fails its checksum"):
        resolve_shipped("student_ca", tmp_path)
    f.unlink()
    with pytest.raises(FileNotFoundError, match="student.safetensors is missing"):
        resolve_shipped("student_ca", tmp_path)
    with pytest.raises(FileNotFoundError, match="no shipped model 'nope'.*student_ca"):
        resolve_shipped("nope", tmp_path)


def test_corrupt_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        resolve_shipped("x", tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {}}))
    with pytest.raises(FileNotFoundError):
        resolve_shipped("x", tmp_path)
