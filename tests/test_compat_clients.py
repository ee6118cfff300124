"""Upstream's library API called the way third-party programs call it, against ours and,
where the oracle runs it, against upstream 4.0.1 / 4.1.0 in a subprocess (same tiny
checkpoints, same audio files): shapes, types, names and numbers.

4.0.1 style: ``get_model`` + ``apply_model(model, mix[None], ...)``, ``load_track``,
``demucs.separate.main([...])`` in process and then carrying on, ``AudioFile(...).read``.
4.1.0 style: ``demucs.api.Separator`` (its public and its "private" members that clients
touch), ``list_models``, the progress callback, ``apply_model``'s pool/lock/callback,
``demucs.api.save_audio``.

Each upstream version runs ONE subprocess (module-scoped fixture) that records every
result; the tests compare ours with those records.
"""

from __future__ import annotations

import os
import shutil
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tests import oracle as upstream
from tests.helpers import RATE, SOURCES, run_main, write_mix

CALLBACK_KEYS = {
    "model_idx_in_bag",
    "shift_idx",
    "segment_offset",
    "state",
    "audio_length",
    "models",
}
SEGMENT = 0.5  # seconds: three segments over the 1.5 s mix
TOL = 1e-4  # max abs difference of separated audio (float32, tiny models)
LSB16 = 1.0 / 32767

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_repo) -> Path:
    """Audio files and a repo (tiny_repo plus a two-model bag ``pair``) that both our
    side and the oracles use; relative names, so the oracle scripts run in this folder."""
    root = tmp_path_factory.mktemp("compat")
    repo = root / "repo"
    shutil.copytree(tiny_repo, repo, ignore=shutil.ignore_patterns("work"))
    if not (repo / "tinyh.th").exists():
        pytest.skip("demucs.htdemucs not importable")
    (repo / "pair.yaml").write_text("models: ['tinyd', 'tinyh']\n")
    write_mix(root / "stereo.wav", seconds=1.5)
    write_mix(root / "mono16k.wav", seconds=0.75, channels=1, samplerate=2 * RATE, seed=1)
    (root / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk" + bytes(64))
    return root


ORACLE_401 = """
import sys
from pathlib import Path
import torch
from demucs.apply import apply_model
from demucs.pretrained import get_model
from demucs.separate import load_track, main

res = {}
for name in ("stereo.wav", "mono16k.wav"):
    res["load_track", name, 2] = load_track(Path(name), 2, 8000)
    res["load_track", name, 1] = load_track(Path(name), 1, 8000)
try:
    load_track(Path("bad.wav"), 2, 8000)
    res["load_track_bad"] = "returned"
except SystemExit as exit_:
    res["load_track_bad"] = exit_.code
wav = res["load_track", "stereo.wav", 2]
ref = wav.mean(0)
for name in ("tiny", "pair"):
    model = get_model(name, repo=Path("repo"))
    model.eval()
    res["model", name] = (list(model.sources), model.samplerate, model.audio_channels,
                          type(model).__name__)
    mix = (wav - ref.mean()) / ref.std()
    out = apply_model(model, mix[None], shifts=0, split=True, overlap=0.25, progress=False,
                      device="cpu", num_workers=0, segment=None)
    res["apply", name] = out[0] * ref.std() + ref.mean()
main(["-n", "tiny", "--repo", "repo", "--shifts", "0", "-o", "upstream401", "stereo.wav"])
res["main_returned"] = True
torch.save(res, "oracle401.pt")
"""

ORACLE_410 = """
from pathlib import Path
import soundfile as sf
import torch
import demucs.api as api
from demucs.apply import apply_model
from demucs.pretrained import get_model

res = {}
try:
    api.Separator(model="nope", repo=Path("repo"))
except RuntimeError as error:
    res["bad_model"] = type(error).__name__
from demucs.separate import get_parser
res["parser"] = {key: repr(value)
                 for key, value in vars(get_parser().parse_args(["x.wav"])).items()}
res["cuda_deferred"] = api.Separator(model="tiny", repo=Path("repo"), device="cuda")._device
events = []
sep = api.Separator(model="tiny", repo=Path("repo"), device="cpu", shifts=0,
                    segment=%(segment)r, callback=events.append, callback_arg={"client": 7})
res["attrs"] = (sep._samplerate, sep._audio_channels, str(sep._repo), sep.samplerate,
                sep.audio_channels, list(sep.model.sources))
origin, stems = sep.separate_audio_file(file=Path("stereo.wav"))
res["file"] = (origin, stems)
res["file_events"] = list(events)
events.clear()
res["load_audio"] = sep._load_audio(Path("mono16k.wav"))
mono = torch.from_numpy(sf.read("mono16k.wav", dtype="float32")[0])[None]
res["tensor"] = sep.separate_tensor(mono, 16000)
res["tensor_events"] = list(events)
events.clear()
sep.update_parameter(shifts=2, segment=api.NotProvided, callback_arg=api.NotProvided)
sep.separate_tensor(res["file"][0])
res["shift_events"] = list(events)
events.clear()
pair = api.Separator(model="pair", repo=Path("repo"), device="cpu", shifts=0,
                     callback=events.append)
res["pair"] = pair.separate_audio_file(Path("stereo.wav"))
res["pair_events"] = list(events)
listing = api.list_models(Path("repo"))
res["list_models"] = {kind: {name: str(path) for name, path in entries.items()}
                      for kind, entries in listing.items()}
res["list_types"] = {kind: type(entries).__name__ for kind, entries in listing.items()}
for name, kwargs in (("s16", {}), ("s24", {"bits_per_sample": 24}),
                     ("f32", {"as_float": True}), ("clamp", {"clip": "clamp"})):
    api.save_audio(stems["drums"] * 8, f"saved_{name}.wav", samplerate=8000, **kwargs)
    info = sf.info(f"saved_{name}.wav")
    data = sf.read(f"saved_{name}.wav", dtype="float64")[0]
    res["save", name] = (torch.from_numpy(data), info.subtype)
model = get_model("tiny", repo=Path("repo"))
events.clear()
mix = torch.from_numpy(sf.read("stereo.wav", dtype="float32")[0].T.copy())
out = apply_model(model, mix[None], shifts=0, split=True, segment=%(segment)r, pool=None,
                  lock=None, callback=events.append, callback_arg={"job": "x"})
res["apply_events"] = list(events)
res["apply"] = out
torch.save(res, "oracle410.pt")
""" % {"segment": SEGMENT}


@pytest.fixture(scope="module")
def up401(workdir) -> dict:
    upstream.require("4.0.1")
    upstream.run(ORACLE_401, cwd=workdir, version="4.0.1")
    return torch.load(workdir / "oracle401.pt", weights_only=True)


@pytest.fixture(scope="module")
def up410(workdir) -> dict:
    upstream.require("4.1.0")
    upstream.run(ORACLE_410, cwd=workdir, version="4.1.0")
    return torch.load(workdir / "oracle410.pt", weights_only=True)


def close(ours: torch.Tensor, theirs: torch.Tensor, tol: float = TOL) -> None:
    assert isinstance(ours, torch.Tensor) and ours.dtype == theirs.dtype == torch.float32
    assert tuple(ours.shape) == tuple(theirs.shape)
    assert (ours - theirs).abs().max().item() <= tol


@pytest.fixture
def cwd(workdir, monkeypatch) -> Path:
    """Runs the test in ``workdir``, as clients pass relative paths."""
    monkeypatch.chdir(workdir)
    return workdir


# ---------------------------------------------------------------------- 4.0.1 style


@pytest.mark.parametrize("name", ["stereo.wav", "mono16k.wav"])
@pytest.mark.parametrize("channels", [2, 1])
def test_load_track_like_upstream(cwd, up401, name, channels):
    from demucs.separate import load_track

    wav = load_track(Path(name), channels, RATE)
    close(wav, up401["load_track", name, channels], tol=1e-6)


def test_load_track_bad_file_exits_1(cwd, up401, capsys):
    from demucs.separate import load_track

    with pytest.raises(SystemExit) as info:
        load_track("bad.wav", 2, RATE)
    assert info.value.code == up401["load_track_bad"] == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bad.wav" in err


@pytest.mark.parametrize("name", ["tiny", "pair"])
def test_get_model_apply_model_like_upstream(cwd, up401, name):
    """``get_model`` + normalise + ``apply_model(model, mix[None], ...)[0]``."""
    from demucs.apply import apply_model
    from demucs.pretrained import get_model
    from demucs.separate import load_track

    model = get_model(name, repo=Path("repo"))
    model.eval()
    sources, samplerate, channels, klass = up401["model", name]
    assert (list(model.sources), model.samplerate, model.audio_channels) == (
        sources,
        samplerate,
        channels,
    )
    assert type(model).__name__ == klass
    wav = load_track(Path("stereo.wav"), model.audio_channels, model.samplerate)
    ref = wav.mean(0)
    mix = (wav - ref.mean()) / ref.std()
    out = apply_model(
        model,
        mix[None],
        shifts=0,
        split=True,
        overlap=0.25,
        progress=False,
        device="cpu",
        num_workers=0,
        segment=None,
    )
    assert out.shape == (1, len(SOURCES), 2, wav.shape[-1])
    close(out[0] * ref.std() + ref.mean(), up401["apply", name])
    shifted = apply_model(model, mix[None], shifts=1, split=True, overlap=0.25)
    assert shifted.shape == out.shape and torch.isfinite(shifted).all()


def test_separate_main_in_process_then_continue(cwd, up401, capsys):
    """A program calls ``demucs.separate.main([...])`` and goes on with its next line."""
    from demucs import separate

    assert up401["main_returned"]
    result = separate.main(
        ["-n", "tiny", "--repo", "repo", "--shifts", "0", "-o", "ours401", "stereo.wav"]
    )
    assert result is None
    for stem in SOURCES:
        ours, sr = sf.read(str(cwd / "ours401" / "tiny" / "stereo" / f"{stem}.wav"), dtype="int16")
        theirs, _ = sf.read(
            str(cwd / "upstream401" / "tiny" / "stereo" / f"{stem}.wav"), dtype="int16"
        )
        assert sr == RATE and ours.shape == theirs.shape
        assert np.abs(ours.astype(int) - theirs).max() <= 1, stem
    status, _, err = run_main(
        ["-n", "tiny", "--repo", "repo", "-o", "ours401", "missing.wav"], capsys
    )
    assert status == 1 and "missing.wav" in err


def test_audiofile_read_shapes_and_seek(cwd):
    """``AudioFile(path).read(seek_time, duration, streams, samplerate, channels)``:
    ``(streams, channels, samples)`` for a slice of streams, ``(channels, samples)`` for
    one stream index; ``duration`` gives exactly ``int(rate * duration)`` samples."""
    from demucs.audio import AudioFile

    data = torch.from_numpy(sf.read("stereo.wav", dtype="float32")[0].T.copy())
    audio = AudioFile(Path("stereo.wav"))
    assert len(audio) == 1
    assert audio.samplerate() == audio.samplerate(0) == RATE
    assert audio.channels() == audio.channels(stream=0) == 2
    assert abs(audio.duration - data.shape[-1] / RATE) < 1e-3
    assert isinstance(audio.info, dict)
    everything = audio.read()
    assert everything.shape == (1, 2, data.shape[-1])
    torch.testing.assert_close(everything[0], data, atol=1e-6, rtol=0)
    one = audio.read(streams=0)
    assert one.shape == (2, data.shape[-1])
    part = audio.read(seek_time=0.5, duration=0.25, streams=0)
    start, size = int(0.5 * RATE), int(0.25 * RATE)
    assert part.shape == (2, size)
    torch.testing.assert_close(part, data[:, start : start + size], atol=1e-6, rtol=0)
    mono = audio.read(streams=0, samplerate=2 * RATE, channels=1, duration=0.5)
    assert mono.shape == (1, RATE)
    assert audio.read(streams=[0], channels=1).shape == (1, 1, data.shape[-1])


# ---------------------------------------------------------------------- 4.1.0 style


@pytest.fixture(scope="module")
def events() -> tp.List[dict]:
    return []


@pytest.fixture(scope="module")
def separator(workdir, events):
    from demucs import api

    return api.Separator(
        model="tiny",
        repo=workdir / "repo",
        device="cpu",
        shifts=0,
        segment=SEGMENT,
        callback=events.append,
        callback_arg={"client": 7},
    )


def test_separator_files_and_tensors_like_upstream(cwd, up410, separator):
    origin, stems = separator.separate_audio_file(Path("stereo.wav"))
    up_origin, up_stems = up410["file"]
    close(origin, up_origin, tol=1e-6)
    assert list(stems) == list(up_stems) == SOURCES
    for name in SOURCES:
        close(stems[name], up_stems[name])
    mono = torch.from_numpy(sf.read("mono16k.wav", dtype="float32")[0])[None]
    origin, stems = separator.separate_tensor(mono, 16000)
    up_origin, up_stems = up410["tensor"]
    close(origin, up_origin, tol=1e-6)
    for name in SOURCES:
        close(stems[name], up_stems[name])


def test_separator_construction_like_upstream(cwd, up410):
    """Construction loads the model (an unknown name raises ``ModelLoadingError``, a
    ``RuntimeError``, at once) and defers the device: ``device="cuda"`` constructs on a
    machine without CUDA, failing only when separating."""
    from demucs import api
    from demucs.pretrained import ModelLoadingError

    with pytest.raises(ModelLoadingError) as info:
        api.Separator(model="nope", repo=Path("repo"))
    assert isinstance(info.value, RuntimeError)
    assert type(info.value).__name__ == up410["bad_model"]
    assert up410["cuda_deferred"] == "cuda"
    api.Separator(model="tiny", repo=Path("repo"), device="cuda")


def test_separator_members_clients_touch(cwd, up410, separator):
    """``_samplerate``, ``_audio_channels``, ``_repo``, ``_load_audio``, ``_load_model``,
    ``separate_audio_file(file=...)``, ``update_parameter`` with ``NotProvided``."""
    from demucs import api

    samplerate, channels, repo, prop_rate, prop_channels, sources = up410["attrs"]
    assert (separator._samplerate, separator._audio_channels) == (samplerate, channels)
    assert (separator.samplerate, separator.audio_channels) == (prop_rate, prop_channels)
    assert Path(separator._repo).name == Path(repo).name
    assert list(separator.model.sources) == sources
    close(separator._load_audio(Path("mono16k.wav")), up410["load_audio"], tol=1e-6)
    origin, stems = separator.separate_audio_file(file=Path("stereo.wav"))
    assert origin.shape == up410["file"][0].shape and list(stems) == SOURCES
    separator._load_model()
    assert separator._samplerate == samplerate
    separator.update_parameter(shifts=0, segment=api.NotProvided, callback=api.NotProvided)
    assert isinstance(api.NotProvided, type(api.NotProvided))
    assert issubclass(api.LoadModelError, Exception)
    assert issubclass(api.LoadAudioError, Exception)


def test_callback_dicts_like_upstream(cwd, up410, separator, events):
    """The progress callback gets upstream's dicts, in upstream's order: every key,
    ``callback_arg``'s entries, one start/end pair per segment and model."""
    events.clear()
    separator.update_parameter(shifts=0, segment=SEGMENT, callback_arg={"client": 7})
    separator.separate_audio_file(Path("stereo.wav"))
    assert events and all(CALLBACK_KEYS <= set(event) for event in events)
    assert events == up410["file_events"]
    events.clear()
    mono = torch.from_numpy(sf.read("mono16k.wav", dtype="float32")[0])[None]
    separator.separate_tensor(mono, 16000)
    assert events == up410["tensor_events"]


def test_callback_shift_and_bag_indices(cwd, up410, workdir):
    from demucs import api

    events: tp.List[dict] = []
    pair = api.Separator(
        model="pair", repo=workdir / "repo", device="cpu", shifts=0, callback=events.append
    )
    origin, stems = pair.separate_audio_file(Path("stereo.wav"))
    for name in SOURCES:
        close(stems[name], up410["pair"][1][name])
    assert events == up410["pair_events"]
    assert {e["model_idx_in_bag"] for e in events} == {0, 1}
    assert {e["models"] for e in events} == {2}
    events.clear()
    pair.update_parameter(shifts=2)
    pair.separate_tensor(origin)
    theirs = up410["shift_events"]
    assert {e["shift_idx"] for e in events} == {e["shift_idx"] for e in theirs} == {0, 1}
    assert all(CALLBACK_KEYS <= set(e) for e in events)


def test_apply_model_pool_lock_callback(cwd, up410):
    """``apply_model(..., pool=None, lock=None, callback=..., callback_arg=...)``."""
    from demucs.apply import apply_model
    from demucs.pretrained import get_model

    events: tp.List[dict] = []
    model = get_model("tiny", repo=Path("repo"))
    mix = torch.from_numpy(sf.read("stereo.wav", dtype="float32")[0].T.copy())
    out = apply_model(
        model,
        mix[None],
        shifts=0,
        split=True,
        segment=SEGMENT,
        pool=None,
        lock=None,
        callback=events.append,
        callback_arg={"job": "x"},
    )
    close(out, up410["apply"])
    assert events == up410["apply_events"]


def test_list_models_shape_like_upstream(cwd, up410):
    """4.1.0: ``{"single": {sig: path}, "bag": {name: path}}`` (dicts, not lists)."""
    from demucs import api

    listing = api.list_models(Path("repo"))
    assert set(listing) == {"single", "bag"}
    assert {kind: type(entries).__name__ for kind, entries in listing.items()} == up410[
        "list_types"
    ]
    for kind, entries in up410["list_models"].items():
        assert set(listing[kind]) == set(entries)
        for name, path in entries.items():
            assert Path(listing[kind][name]).name == Path(path).name


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("s16", {}),
        ("s24", {"bits_per_sample": 24}),
        ("f32", {"as_float": True}),
        ("clamp", {"clip": "clamp"}),
    ],
)
def test_api_save_audio_like_upstream(cwd, up410, name, kwargs):
    from demucs import api

    wav = up410["file"][1]["drums"] * 8
    api.save_audio(wav, f"ours_{name}.wav", samplerate=RATE, **kwargs)
    data, subtype = up410["save", name]
    assert sf.info(f"ours_{name}.wav").subtype == subtype
    ours = sf.read(f"ours_{name}.wav", dtype="float64")[0]
    assert ours.shape == tuple(data.shape)
    assert np.abs(ours - data.numpy()).max() <= 1.01 * LSB16


def test_saved_files_honour_umask(cwd):
    """Outputs are created like ``open(path, "wb")`` does (0666 minus the umask), as
    upstream's are, not 0600."""
    from demucs import api

    umask = os.umask(0o022)
    try:
        api.save_audio(torch.zeros(2, 100), "mode.wav", samplerate=RATE)
    finally:
        os.umask(umask)
    assert (Path("mode.wav").stat().st_mode & 0o777) == 0o644


def test_get_parser_defaults_like_upstream(up410):
    """Programs build their own arguments with ``get_parser()`` and pass ``args.name`` /
    ``args.device`` to ``Separator``/``get_model``: 4.1.0's defaults ("htdemucs"; cuda
    when available, else cpu; 4.0.1's ``name=None`` means the same model)."""
    from demucs.separate import get_parser

    ours = {key: repr(value) for key, value in vars(get_parser().parse_args(["x.wav"])).items()}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    theirs = dict(up410["parser"], device=repr(device))
    assert {key: ours.get(key) for key in theirs} == theirs


def test_repo_list_model_like_upstream(cwd, up410):
    """4.1.0's ``ModelOnlyRepo.list_model()`` / ``BagOnlyRepo.list_model()``: name -> file."""
    from demucs.repo import BagOnlyRepo, LocalRepo

    local = LocalRepo(Path("repo"))
    bags = BagOnlyRepo(Path("repo"), local)
    for kind, listing in (("single", local.list_model()), ("bag", bags.list_model())):
        assert isinstance(listing, dict)
        assert {name: Path(path).name for name, path in listing.items()} == {
            name: Path(path).name for name, path in up410["list_models"][kind].items()
        }


def test_demucs_repo_environment_variable(cwd, monkeypatch):
    """Programs that call ``get_model(name)`` cannot pass ``--repo``: ``DEMUCS_REPO``
    points the default catalog at a local folder (the name is not in the remote catalog,
    so nothing is downloaded either way)."""
    from demucs.pretrained import get_model

    monkeypatch.setenv("DEMUCS_REPO", str(cwd / "repo"))
    model = get_model("tiny")
    assert list(model.sources) == SOURCES
