"""demucs.api: Separator, list_models, save_audio (mirrors the CLI tests)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from demucs import api
from demucs.api import LoadAudioError, ModelLoadingError, Separator, list_models, save_audio
from tests.helpers import RATE, SOURCES, run_main, write_mix


@pytest.fixture(scope="module")
def separator(tiny_repo):  # noqa: F811
    return Separator("tiny", repo=tiny_repo, device="cpu", shifts=0)


def test_properties(separator):
    assert separator.samplerate == RATE and separator.audio_channels == 2
    assert list(separator.model.sources) == SOURCES
    assert "tiny" in repr(separator)


def test_separate_tensor_shapes_and_sum(separator):
    torch.manual_seed(1)
    wav = torch.randn(2, RATE) * 0.1
    origin, stems = separator.separate_tensor(wav)
    assert torch.equal(origin, wav)
    assert list(stems) == SOURCES
    assert all(s.shape == (2, RATE) and s.dtype == torch.float32 for s in stems.values())


def test_separate_tensor_resamples_and_upmixes(separator):
    wav = torch.randn(1, 2 * RATE) * 0.1
    origin, stems = separator.separate_tensor(wav, sr=2 * RATE)
    assert origin.shape == (2, RATE)
    assert stems["vocals"].shape == (2, RATE)
    _, stems = separator.separate_tensor(torch.randn(RATE) * 0.1)  # 1-D: mono
    assert stems["bass"].shape == (2, RATE)


def test_matches_cli(tmp_path, separator, tiny_repo, capsys):  # noqa: F811
    write_mix(tmp_path / "a.wav")
    code, _, err = run_main(
        [
            "--repo",
            tiny_repo,
            "-n",
            "tiny",
            "--shifts",
            "0",
            "--float32",
            "--clip-mode",
            "clamp",
            "-q",
            "-o",
            tmp_path / "out",
            tmp_path / "a.wav",
        ],
        capsys,
    )
    assert code == 0, err
    _, stems = separator.separate_audio_file(tmp_path / "a.wav")
    for name, wav in stems.items():
        cli = sf.read(str(tmp_path / "out" / "tiny" / "a" / f"{name}.wav"), dtype="float32")[0]
        np.testing.assert_allclose(wav.clamp(-0.99, 0.99).numpy().T, cli, atol=1e-6)


def test_short_and_silent_inputs(separator):
    for wav in (torch.zeros(2, RATE), torch.full((2, 1), 0.1), torch.randn(2, 7) * 0.1):
        _, stems = separator.separate_tensor(wav)
        for stem in stems.values():
            assert stem.shape == wav.shape and torch.isfinite(stem).all()


def test_update_parameter(separator):
    separator.update_parameter(shifts=1, overlap=0.5, split=False, jobs=1)
    try:
        _, stems = separator.separate_tensor(torch.randn(2, RATE) * 0.1)
        assert stems["drums"].shape == (2, RATE)
        with pytest.raises(ValueError):
            separator.update_parameter(overlap=1.5)
        with pytest.raises(ValueError):
            separator.update_parameter(shifts=-1)
    finally:
        separator.update_parameter(shifts=0, overlap=0.25, split=True, jobs=0)
    assert separator._overlap == 0.25 and separator._split


def test_callback(separator):
    events = []
    separator.update_parameter(callback=events.append, callback_arg={"job": 7})
    try:
        separator.separate_tensor(torch.randn(2, RATE) * 0.1)
    finally:
        separator.update_parameter(callback=None, callback_arg=None)
    assert events and events[0]["state"] == "start" and events[-1]["state"] == "end"
    assert all(e["job"] == 7 and e["audio_length"] == RATE for e in events)
    assert "forward" not in separator.model.models[0].__dict__  # hook removed

    def cancel(info):
        raise KeyboardInterrupt

    separator.update_parameter(callback=cancel)
    try:
        with pytest.raises(KeyboardInterrupt):
            separator.separate_tensor(torch.randn(2, RATE) * 0.1)
    finally:
        separator.update_parameter(callback=None)


def test_bad_files_raise_load_audio_error(tmp_path, separator):
    (tmp_path / "text.mp3").write_text("not audio\n" * 20)
    (tmp_path / "empty.wav").write_bytes(b"")
    for name in ("missing.wav", "text.mp3", "empty.wav"):
        with pytest.raises(LoadAudioError) as info:
            separator.separate_audio_file(tmp_path / name)
        assert name in str(info.value)


def test_bad_tensors(separator):
    with pytest.raises(ValueError):
        separator.separate_tensor(torch.zeros(2, 0))
    with pytest.raises(ValueError):
        separator.separate_tensor(torch.zeros(1, 2, 100))
    with pytest.raises(TypeError):
        separator.separate_tensor(np.zeros((2, 100)))  # type: ignore[arg-type]


def test_unknown_model(tiny_repo):  # noqa: F811
    with pytest.raises(ModelLoadingError, match="nosuchmodel"):
        Separator("nosuchmodel", repo=tiny_repo)
    with pytest.raises(ModelLoadingError):
        Separator("tiny", repo=tiny_repo / "missing")


def test_list_models(tiny_repo):  # noqa: F811
    models = list_models(tiny_repo)  # 4.1.0's shape: {"single": {name: ...}, "bag": {...}}
    assert sorted(models["single"]) == sorted(p.stem for p in tiny_repo.glob("*.th"))
    assert sorted(models["bag"]) == sorted(p.stem for p in tiny_repo.glob("*.yaml"))
    remote = list_models()
    assert "htdemucs" in remote["bag"] and remote["single"]


def test_save_audio_reexported(tmp_path, separator):
    assert api.save_audio is save_audio
    _, stems = separator.separate_tensor(torch.randn(2, RATE) * 0.1)
    save_audio(stems["vocals"], tmp_path / "v.mp3", separator.samplerate, bitrate=64)
    assert sf.info(str(tmp_path / "v.mp3")).frames == RATE


def test_non_finite_input_is_replaced_with_one_warning(separator):
    """One NaN (and an Inf) in the input: finite stems, as with the input cleaned, and one
    AudioWarning (not an all-NaN output)."""
    from demucs.io import AudioWarning

    torch.manual_seed(3)
    wav = torch.randn(2, RATE) * 0.1
    bad = wav.clone()
    bad[0, 100] = float("nan")
    bad[1, 200] = float("inf")
    clean = wav.clone()
    clean[0, 100], clean[1, 200] = 0.0, 1.0
    with pytest.warns(AudioWarning, match="2 non-finite"):
        _, stems = separator.separate_tensor(bad)
    _, expected = separator.separate_tensor(clean)
    for name, stem in stems.items():
        assert torch.isfinite(stem).all()
        assert torch.allclose(stem, expected[name], atol=1e-6)
