"""Checkpoints: safe loading, upstream compatibility both ways, clear errors."""

import argparse
import os
import pickle
import sys
import types
import warnings
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from demucs import states
from tests.helpers import TinyNet
from demucs.states import (
    MissingDiffQError,
    ModelLoadingError,
    UnsafeCheckpointError,
    allow_model_class,
    copy_state,
    get_state,
    load_model,
    save_model,
    save_with_checksum,
    serialize_model,
    set_state,
    swap_state,
)


class Unregistered(TinyNet):
    """Same model, but never added with allow_model_class."""


allow_model_class(TinyNet)


class Evil:
    """Pickles to a call of os.system: loading it would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_roundtrip_file(tmp_path):
    model = TinyNet(hidden=5, segment=Fraction(7, 3))
    path = save_model(model, tmp_path / "m.th", training_args={"lr": 1e-3, "epochs": [1, 2]})
    package = torch.load(path, weights_only=False)
    assert package["state"]["conv.weight"].dtype == torch.half
    assert package["training_args"] == {"lr": 1e-3, "epochs": [1, 2]}
    loaded = load_model(path)
    assert isinstance(loaded, TinyNet)
    assert loaded.segment == Fraction(7, 3) and loaded.conv.out_channels == 5
    assert loaded.conv.weight.dtype == torch.float32
    x = torch.randn(1, 2, 20)
    ref = TinyNet(hidden=5)
    ref.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    assert torch.allclose(loaded(x), ref(x))


def test_training_args_namespace_is_plain(tmp_path):
    package = serialize_model(TinyNet(), argparse.Namespace(a=1, b="x"), half=False)
    assert package["training_args"] == {"a": 1, "b": "x"}
    assert package["state"]["conv.weight"].dtype == torch.float32


def test_use_conv_stft_never_serialized_and_selectable(tmp_path):
    model = TinyNet(use_conv_stft=True)
    package = serialize_model(model, {})
    assert "use_conv_stft" not in package["kwargs"]
    path = tmp_path / "m.th"
    torch.save(package, path)
    assert load_model(path).use_conv_stft is False
    assert load_model(path, use_conv_stft=True).use_conv_stft is True


def test_unknown_kwargs_dropped_with_warning():
    package = serialize_model(TinyNet(), {})
    package["kwargs"]["from_the_future"] = 3
    with pytest.warns(UserWarning, match="from_the_future"):
        load_model(package)
    with pytest.raises(TypeError):
        load_model(package, strict=True)
    assert "from_the_future" in package["kwargs"]  # the caller's dict is left alone


def test_save_with_checksum(tmp_path):
    import hashlib

    target = save_with_checksum({"x": torch.ones(2)}, tmp_path / "sig.th")
    stem, checksum = target.stem.split("-")
    assert stem == "sig" and len(checksum) == 8
    assert hashlib.sha256(target.read_bytes()).hexdigest().startswith(checksum)


def test_copy_and_swap_state():
    model = TinyNet()
    old = copy_state(model.state_dict())
    new = {k: torch.zeros_like(v) for k, v in old.items()}
    with swap_state(model, new):
        assert model.conv.weight.abs().sum() == 0
    assert torch.equal(model.conv.weight, old["conv.weight"])
    state = get_state(model, None, half=True)
    assert state["conv.weight"].dtype == torch.half


def test_malicious_pickle_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.th"
    package = serialize_model(TinyNet(), {})
    package["training_args"] = {"x": Evil(marker)}
    torch.save(package, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "not a safe" in message and "system" in message
    assert isinstance(info.value, ValueError) and isinstance(info.value, ModelLoadingError)
    assert not marker.exists()


def test_malicious_raw_pickle_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_raw.th"
    with open(path, "wb") as file:
        pickle.dump({"klass": Evil(marker)}, file)
    with pytest.raises(UnsafeCheckpointError, match="not a safe"):
        load_model(path)
    assert not marker.exists()


def test_unknown_class_needs_trust(tmp_path, monkeypatch):
    path = tmp_path / "other.th"
    torch.save(serialize_model(Unregistered(), {}), path)
    with pytest.raises(UnsafeCheckpointError, match="Unregistered"):
        load_model(path)
    assert isinstance(load_model(path, trust=True), Unregistered)
    monkeypatch.setenv(states.TRUST_ENV, "1")
    assert isinstance(load_model(path), Unregistered)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.th"
    torch.save(serialize_model(TinyNet(), {}), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadingError, match="truncated or corrupted") as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_missing_file_and_bad_inputs(tmp_path):
    with pytest.raises(ModelLoadingError, match="does not exist"):
        load_model(tmp_path / "nope.th")
    with pytest.raises(ValueError):
        load_model(42)
    with pytest.raises(ModelLoadingError, match="missing"):
        load_model({"klass": TinyNet})
    torch.save({"just": torch.ones(1)}, tmp_path / "t.th")
    with pytest.raises(ModelLoadingError, match="not a Demucs"):
        load_model(tmp_path / "t.th")


def test_quantized_state_without_diffq(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffq", None)  # as if not installed
    with pytest.raises(MissingDiffQError, match=r"pip install demucs\[quantized\]"):
        set_state(TinyNet(), {"__quantized": True, "quantized": []})


def test_quantized_file_without_diffq(tmp_path, monkeypatch):
    # Quantized checkpoints name diffq's quantizer class; fake one just to pickle it.
    fake = types.ModuleType("diffq.diffq")

    class DiffQuantizer:
        pass

    DiffQuantizer.__module__ = "diffq.diffq"
    DiffQuantizer.__qualname__ = "DiffQuantizer"
    fake.DiffQuantizer = DiffQuantizer
    monkeypatch.setitem(sys.modules, "diffq", types.ModuleType("diffq"))
    monkeypatch.setitem(sys.modules, "diffq.diffq", fake)
    package = serialize_model(TinyNet(), {})
    package["state"] = {
        "__quantized": True,
        "quantized": [],
        "float16": [],
        "others": [],
        "meta": {"klass": DiffQuantizer, "init_kwargs": {}, "packed": True},
    }
    path = tmp_path / "q.th"
    torch.save(package, path)
    monkeypatch.setitem(sys.modules, "diffq", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "diffq.diffq", None)
    with pytest.raises(MissingDiffQError) as info:
        load_model(path)
    assert "pip install diffq" in str(info.value) and str(path) in str(info.value)


def test_get_quantizer_disabled_needs_no_diffq():
    args = argparse.Namespace(diffq=0, qat=0, min_size=0.01, group_size=8)
    assert states.get_quantizer(TinyNet(), args) is None


# ---------------------------------------------------------------------------------------
# Upstream compatibility (oracle), with the real model classes.
# ---------------------------------------------------------------------------------------

HT_KWARGS = dict(
    sources=["drums", "bass"],
    audio_channels=2,
    channels=4,
    depth=2,
    nfft=512,
    t_layers=1,
    t_heads=2,
    dconv_comp=2,
    samplerate=8000,
    segment=Fraction(1, 2),
)


@pytest.mark.parametrize("use_conv_stft", [False, True])
def test_upstream_htdemucs_checkpoint_loads(oracle, tmp_path, use_conv_stft):
    pytest.importorskip("demucs.htdemucs")
    torch.manual_seed(0)
    mix = torch.randn(1, 2, 4000)
    path = tmp_path / "up.th"
    ref = oracle.make_model("htdemucs.HTDemucs", HT_KWARGS, mix, tmp_path, checkpoint=path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no dropped kwargs for an upstream checkpoint
        model = load_model(path, use_conv_stft=use_conv_stft).eval()
    assert type(model).__module__ == "demucs.htdemucs"
    assert model.segment == Fraction(1, 2)
    for key, value in ref["state"].items():  # checkpoints hold float16 weights
        assert torch.equal(model.state_dict()[key], value.half().float()), key
    with torch.no_grad():
        out = model(mix)
    ref_model_out = ref["output"]
    assert out.shape == ref_model_out.shape
    # Weights went through float16, so compare loosely with the float32 reference.
    assert (out - ref_model_out).abs().max() < 5e-2 * ref_model_out.abs().max()


def test_our_checkpoint_loads_in_upstream(oracle, tmp_path):
    htdemucs = pytest.importorskip("demucs.htdemucs")
    torch.manual_seed(0)
    kwargs = dict(HT_KWARGS)
    if "use_conv_stft" in __import__("inspect").signature(htdemucs.HTDemucs).parameters:
        kwargs["use_conv_stft"] = True
    model = htdemucs.HTDemucs(**kwargs).eval()
    path = save_model(model, tmp_path / "ours.th", training_args={"seed": 1})
    mix = torch.randn(1, 2, 4000)
    torch.save({"mix": mix}, tmp_path / "in.pt")
    ours = load_model(path, use_conv_stft=False).eval()
    with torch.no_grad():
        expected = ours(mix)
    oracle.run(
        f"""
        import warnings, torch
        warnings.filterwarnings("error", message="Dropping")
        from demucs.states import load_model
        package = torch.load({str(path)!r})
        assert "use_conv_stft" not in package["kwargs"], package["kwargs"]
        model = load_model({str(path)!r}).eval()
        with torch.no_grad():
            out = model(torch.load({str(tmp_path / "in.pt")!r})["mix"])
        torch.save({{"out": out}}, {str(tmp_path / "out.pt")!r})
    """,
        cwd=tmp_path,
    )
    out = oracle.load_result(tmp_path / "out.pt")["out"]
    assert (out - expected).abs().max() < 1e-4


@pytest.mark.parametrize(
    "module, klass, kwargs",
    [
        (
            "demucs.hdemucs",
            "HDemucs",
            dict(
                sources=["a", "b"],
                channels=4,
                depth=2,
                nfft=512,
                samplerate=8000,
                segment=Fraction(1, 2),
            ),
        ),
        (
            "demucs.demucs",
            "Demucs",
            dict(sources=["a", "b"], channels=4, depth=2, samplerate=8000, segment=Fraction(1, 2)),
        ),
    ],
)
def test_upstream_older_model_checkpoints_load(oracle, tmp_path, module, klass, kwargs):
    pytest.importorskip(module)
    path = tmp_path / "up.th"
    oracle.make_model(f"{module.split('.')[1]}.{klass}", kwargs, None, tmp_path, checkpoint=path)
    model = load_model(path)
    assert type(model).__name__ == klass


def test_legacy_format(tmp_path):
    """Pre-zip torch.save files: they store module classes in a way weights_only cannot
    read, so they need trust; payloads are named from a static scan, never run."""
    good = tmp_path / "good.th"
    torch.save(serialize_model(TinyNet(), {}), good, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="not a safe"):
        load_model(good)
    assert isinstance(load_model(good, trust=True), TinyNet)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.th"
    torch.save(
        {"klass": Evil(marker), "t": torch.ones(2)}, evil, _use_new_zipfile_serialization=False
    )
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_model(evil)
    assert not marker.exists()
