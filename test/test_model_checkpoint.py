"""Checkpoints (config stored with the weights, mismatch refusal, corrupt files) and export
(torch.jit.trace, torch.onnx.export + onnxruntime) of the whole forward."""
import json
import warnings

import numpy as np
import pytest
import torch

from csl_ros.model import build_student, file_sha256, get_preset, load_checkpoint, read_checkpoint, save_checkpoint
from csl_ros.model_settings import main as checkpoint_main
from csl_ros.model_settings import save_student, update_metadata
from csl_ros.model.integrity import weights_sha256


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_student(get_preset("r18_fast", num_queries=12, dec_layers=3)).eval()
    for p in m.parameters():  # make every tensor distinctive so a mix-up cannot go unnoticed
        p.data.add_(torch.randn_like(p) * 0.01)
    return m


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_round_trip(model, tmp_path, suffix):
    path = tmp_path / f"student{suffix}"
    digest = save_checkpoint(path, model, metadata={"step": 123})
    assert digest == file_sha256(path) and len(digest) == 64
    loaded = load_checkpoint(path)
    assert loaded.config == model.config and loaded.metadata == {"step": "123", "stored_dtype": "float32"} and loaded.sha256 == digest
    assert not loaded.model.training
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        for a, b in zip(model(x)[:3], loaded.model(x)[:3]):
            assert torch.equal(a, b)
    assert load_checkpoint(path, expected_config=model.config).config == model.config


@pytest.mark.parametrize("storage,max_rel_err,size_ratio", [("float16", 1e-3, 0.55), ("int8", 1.0 / 127, 0.3)])
def test_compact_storage_loads_as_float32_within_its_quantisation_step(model, tmp_path, storage, max_rel_err,
                                                                       size_ratio):
    full, small = tmp_path / "full.safetensors", tmp_path / f"{storage}.safetensors"
    save_checkpoint(full, model)
    save_checkpoint(small, model, metadata={"step": 1}, storage=storage)
    assert small.stat().st_size < size_ratio * full.stat().st_size
    loaded = load_checkpoint(small)
    assert loaded.metadata["stored_dtype"] == storage
    own = model.state_dict()
    for k, v in loaded.model.state_dict().items():
        assert v.dtype == own[k].dtype
        if v.is_floating_point():
            # per output channel: error <= half a step of max|w| / 127 (int8) or fp16 rounding
            ref = own[k].float()
            amax = ref.abs().reshape(ref.shape[0], -1).amax(1) if ref.dim() >= 1 and ref.numel() else ref.abs()
            err = (v - ref).abs().reshape(v.shape[0], -1).amax(1) if v.dim() >= 1 and v.numel() else (v - ref).abs()
            assert torch.all(err <= max_rel_err * amax + 1e-6), k
    x = torch.rand(1, 3, 64, 96) * 255
    with torch.no_grad():
        a, b = model(x).region_logits, loaded.model(x).region_logits
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_int8_file_with_a_missing_scale_is_refused_naming_the_tensor(model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    good = tmp_path / "int8.safetensors"
    save_checkpoint(good, model, storage="int8")
    with safe_open(good, framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    victim = next(k for k in state if k.endswith(".__int8_scale"))
    del state[victim]
    bad = tmp_path / "bad.safetensors"
    save_file(state, bad, metadata={**meta, "weights_sha256": weights_sha256(state)})  # consistent hash
    with pytest.raises(ValueError, match=r"bad\.safetensors: int8 tensor .* has no"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="storage"):
        save_checkpoint(tmp_path / "x.safetensors", model, storage="bfloat16")


def test_pt_checkpoint_loads_with_weights_only(model, tmp_path):
    path = tmp_path / "student.pt"
    save_checkpoint(path, model)
    blob = torch.load(path, weights_only=True)
    assert blob["model_config"] == model.config.to_dict() and "state_dict" in blob


def test_expected_config_mismatch_is_refused_naming_the_fields(model, tmp_path):
    path = tmp_path / "student.safetensors"
    save_checkpoint(path, model)
    with pytest.raises(ValueError, match=r"student\.safetensors.*num_queries: file 12 vs expected 50"):
        load_checkpoint(path, expected_config=get_preset("r18_fast", dec_layers=3))


def test_weights_not_matching_the_stored_config_are_refused(model, tmp_path):
    from safetensors.torch import load_file, save_file
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model)
    config, state, _ = read_checkpoint(good)
    # Same weights, but a config claiming 20 queries and no distillation head.
    lying = dict(config.to_dict(), num_queries=20, distill_channels=0)
    bad = tmp_path / "lying.safetensors"
    save_file(load_file(good), bad, metadata={"format": "csl_ros.student", "format_version": "1",
                                              "model_config": json.dumps(lying),
                                              "weights_sha256": weights_sha256(load_file(good))})
    with pytest.raises(ValueError) as err:
        load_checkpoint(bad)
    message = str(err.value)
    assert "lying.safetensors" in message and "query_feat.weight" in message and "distill_head" in message
    # A .pt file with a tensor removed.
    del state["transformer_decoder.level_embed.weight"]
    pt = tmp_path / "partial.pt"
    torch.save({"format": "csl_ros.student", "format_version": "1", "model_config": config.to_dict(),
                "state_dict": state, "metadata": {"weights_sha256": weights_sha256(state)}}, pt)
    with pytest.raises(ValueError, match=r"partial\.pt.*missing.*level_embed"):
        load_checkpoint(pt)


def test_missing_corrupt_and_foreign_files(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_checkpoint(tmp_path / "absent.safetensors")
    for suffix in (".safetensors", ".pt"):
        path = tmp_path / f"full{suffix}"
        save_checkpoint(path, model)
        truncated = tmp_path / f"truncated{suffix}"
        truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(ValueError, match=f"truncated{suffix}"):
            load_checkpoint(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors"):
        load_checkpoint(garbage)
    foreign = tmp_path / "plain_state_dict.pt"
    torch.save(model.state_dict(), foreign)
    with pytest.raises(ValueError, match="not a csl_ros student checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "x.pt", model, metadata={"model_config": "{}"})


def _flip_a_weight_byte(path):
    """Flip one bit in the middle of the largest tensor's bytes (the header stays valid)."""
    from safetensors import safe_open
    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    with safe_open(path, framework="pt") as fh:
        assert fh.metadata()["weights_sha256"]
    name = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1]
               - header[k]["data_offsets"][0])
    start, end = header[name]["data_offsets"]
    data[8 + header_len + (start + end) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("storage", ["float32", "int8"])
def test_a_flipped_byte_in_the_weights_is_refused_naming_the_file(model, tmp_path, storage):
    path = tmp_path / f"student_{storage}.safetensors"
    save_checkpoint(path, model, storage=storage)
    load_checkpoint(path)
    _flip_a_weight_byte(path)
    with pytest.raises(ValueError, match=rf"student_{storage}\.safetensors: the weights do not match the SHA-256"):
        load_checkpoint(path)
    pt = tmp_path / "student.pt"
    save_checkpoint(pt, model)
    blob = torch.load(pt, weights_only=True)
    next(iter(blob["state_dict"].values())).view(-1)[0] += 1.0
    torch.save(blob, pt)
    with pytest.raises(ValueError, match=r"student\.pt: the weights do not match"):
        load_checkpoint(pt)


def test_shipped_students_carry_their_hash_and_load():
    from csl_ros.shipped import resolve_shipped
    for name in ("student_ca", "student_scheme1"):
        loaded = load_checkpoint(resolve_shipped(name))
        assert loaded.metadata["input_height"] == "256" and "weights_sha256" not in loaded.metadata


def test_file_without_embedded_hash_is_refused(model, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model)
    with safe_open(good, framework="pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != "weights_sha256"}
        state = {k: fh.get_tensor(k) for k in fh.keys()}
    old = tmp_path / "old.safetensors"
    save_file(state, old, metadata=meta)
    with pytest.raises(ValueError, match=r"old\.safetensors: student checkpoint without an embedded weights_sha256"):
        load_checkpoint(old)


def test_json_or_pickle_given_as_a_checkpoint_gets_our_message(tmp_path):
    import pickle
    js = tmp_path / "params.pt"
    js.write_text(json.dumps({"score_threshold": 0.3}))
    pk = tmp_path / "objects.pth"
    pk.write_bytes(pickle.dumps({"model": {1, 2}, "when": __import__("datetime").date(2024, 1, 1)}))
    for path in (js, pk):
        with pytest.raises(ValueError) as err:
            load_checkpoint(path)
        message = str(err.value)
        assert message.startswith(str(path)) and "never unpickles" in message
        assert "weights_only=False" not in message and "\n" not in message


def test_update_metadata_keeps_the_tensors_and_checks_model_settings(model, tmp_path, capsys):
    path = tmp_path / "student.safetensors"
    save_checkpoint(path, model, metadata={"step": 5})
    _, before, _ = read_checkpoint(path)
    update_metadata(path, {"score_threshold": 0.3, "input_height": 256})
    _, after, meta = read_checkpoint(path)
    assert meta["score_threshold"] == "0.3" and meta["step"] == "5"
    assert weights_sha256(before) == weights_sha256(after)
    assert checkpoint_main([str(path), "score_threshold=1.5"]) == 2
    assert "score_threshold=1.5 is outside" in capsys.readouterr().err
    with pytest.raises(ValueError, match="input_width"):
        save_student(tmp_path / "x.pt", model, metadata={"input_width": "wide"})


# --- export --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def r18_fast():
    torch.manual_seed(1)
    return build_student("r18_fast").eval()


def test_jit_trace_matches_eager(r18_fast):
    x = torch.rand(1, 3, 96, 160) * 255
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace is deprecated upstream, still supported
        with torch.no_grad():
            traced = torch.jit.trace(r18_fast, x)
    other = torch.rand(1, 3, 96, 160) * 255   # not the tracing input
    with torch.no_grad():
        eager, got = r18_fast(other), traced(other)
    for a, b in zip(eager[:3], got[:3]):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    assert got[3] == () and got[4] == ()


@pytest.mark.slow
def test_onnx_export_runs_in_onnxruntime_and_matches_eager(r18_fast, tmp_path):
    import onnxruntime as ort
    x = torch.rand(1, 3, 96, 160) * 255
    path = tmp_path / "student.onnx"
    torch.onnx.export(r18_fast, (x,), str(path), dynamo=True, input_names=["images"],
                      output_names=["region_logits", "validity_logits", "distribution"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["region_logits", "validity_logits", "distribution"]
    other = torch.rand(1, 3, 96, 160) * 255
    got = session.run(None, {"images": other.numpy()})
    with torch.no_grad():
        eager = r18_fast(other)
    for a, b in zip(eager[:3], got):
        assert a.shape == b.shape
        assert np.abs(a.numpy() - b).max() < 1e-4
