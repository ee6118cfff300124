"""Model files are untrusted input: crafted checkpoints and bag files are refused with one
``ModelLoadingError`` line naming the file, before anything big is allocated.

The checkpoints are written with ``torch.save`` in upstream's layout (``klass``, ``args``,
``kwargs``, ``state``, ``training_args``), the way a hostile file would be made.
"""

from __future__ import annotations

import fractions
import os
import time
import typing as tp
from pathlib import Path

import pytest
import torch

from demucs.errors import ModelArgumentsError, ModelLoadingError
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.model_checks import MAX_PARAMETERS, check_name, count_parameters
from demucs.pretrained import get_model
from demucs.states import load_model, save_model, serialize_model
from demucs import configs

SOURCES = ["drums", "bass", "other", "vocals"]
TINY: tp.Dict[str, tp.Any] = dict(
    sources=SOURCES,
    channels=4,
    nfft=256,
    depth=4,
    norm_starts=2,
    norm_groups=2,
    dconv_attn=3,
    dconv_lstm=3,
)


def _package(**changes: tp.Any) -> tp.Dict[str, tp.Any]:
    """A valid tiny HDemucs checkpoint dict, with ``changes`` applied to its top level
    (``kwargs=dict(...)`` entries are merged into the constructor arguments)."""
    torch.manual_seed(0)
    package = serialize_model(HDemucs(**TINY), {})
    if "kwargs" in changes:
        package["kwargs"] = dict(package["kwargs"], **changes.pop("kwargs"))
    package.update(changes)
    return package


def _write(tmp_path: Path, package: tp.Any, name: str = "crafted.th") -> Path:
    path = tmp_path / name
    torch.save(package, path)
    return path


def _refused(path: Path, match: str) -> ModelLoadingError:
    with pytest.raises(ModelLoadingError, match=match) as info:
        load_model(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message, message
    return info.value


# ------------------------------------------------------------------------- names

BAD_NAMES = [
    "../../../tmp/x",
    "a/b",
    "a\\b",
    "",
    ".",
    "..",
    "a\x00b",
    "line\nbreak",
    "x" * 200,
    3,
    None,
]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_source_names_must_be_file_name_components(tmp_path, bad):
    sources = ["drums", bad, "other", "vocals"]
    path = _write(tmp_path, _package(kwargs=dict(sources=sources)))
    _refused(path, "source name")


def test_other_source_list_problems(tmp_path):
    _refused(_write(tmp_path, _package(kwargs=dict(sources=["a", "a", "b", "c"]))), "duplicate")
    _refused(_write(tmp_path, _package(kwargs=dict(sources="drums"))), "list of names")
    _refused(_write(tmp_path, _package(kwargs=dict(sources=[]))), "1 to")


def test_check_name_accepts_plain_names():
    for name in ["vocals", "minus vocals", "ドラム", "a.b", "x" * 128]:
        assert check_name(name, "source name", "f") == name


# ------------------------------------------------------------------------- values


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("samplerate", 0, "samplerate"),
        ("samplerate", -44100, "samplerate"),
        ("samplerate", 44100.5, "samplerate"),
        ("samplerate", "44100", "samplerate"),
        ("samplerate", 10**9, "samplerate"),
        ("audio_channels", 0, "audio_channels"),
        ("audio_channels", 1000, "audio_channels"),
        ("segment", 0, "segment"),
        ("segment", -1.0, "segment"),
        ("segment", float("nan"), "segment"),
        ("segment", float("inf"), "segment"),
        ("segment", "banana", "segment"),
        ("channels", 0, "channels"),
        ("channels", 2.5, "channels"),
        ("growth", float("nan"), "growth"),
        ("nfft", 1 << 30, "nfft"),
        ("dconv_mode", 7, "dconv_mode"),
        ("multi_freqs", [0.5, 2.0], "multi_freqs"),
    ],
)
def test_declared_values_are_validated(tmp_path, key, value, match):
    _refused(_write(tmp_path, _package(kwargs={key: value})), match)


def test_huge_architecture_is_refused_before_allocating(tmp_path):
    """depth=50 once made the process allocate until it was killed."""
    start = time.monotonic()
    _refused(_write(tmp_path, _package(kwargs=dict(depth=50))), "depth")
    _refused(_write(tmp_path, _package(kwargs=dict(channels=8192, depth=8))), "channels")
    assert time.monotonic() - start < 10


def test_parameter_count_is_bounded_on_the_meta_device(tmp_path):
    kwargs = dict(configs.TINY_HTDEMUCS, channels=2048, depth=3, t_layers=1)
    assert count_parameters(HTDemucs, [], kwargs) > MAX_PARAMETERS
    package = {"klass": HTDemucs, "args": [], "kwargs": kwargs, "state": {}, "training_args": {}}
    start = time.monotonic()
    _refused(_write(tmp_path, package), "parameters")
    assert time.monotonic() - start < 20


def test_htdemucs_training_segment_is_bounded(tmp_path):
    kwargs = dict(configs.TINY_HTDEMUCS, segment=3000)
    package = {"klass": HTDemucs, "args": [], "kwargs": kwargs, "state": {}, "training_args": {}}
    _refused(_write(tmp_path, package), "training segment")


def test_count_parameters_matches_the_real_model():
    model = HDemucs(**TINY)
    real = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert count_parameters(HDemucs, [], TINY) == real


# ------------------------------------------------------------------------- layout


def test_allowed_class_in_the_wrong_place(tmp_path):
    _refused(_write(tmp_path, _package(klass=fractions.Fraction)), "'klass' must be")
    _refused(_write(tmp_path, _package(klass="HDemucs")), "'klass' must be")
    state = dict(_package()["state"], extra=HTDemucs)
    _refused(_write(tmp_path, _package(state=state)), "not a tensor")
    _refused(_write(tmp_path, _package(args=HTDemucs)), "'args' must be a list")
    _refused(_write(tmp_path, _package(kwargs=dict(channels=HTDemucs))), "channels")
    _refused(_write(tmp_path, _package(state=[1, 2])), "'state' must be")
    quantized = {
        "__quantized": True,
        "quantized": [],
        "float16": [],
        "others": [],
        "meta": {"klass": HTDemucs, "init_kwargs": {}},
    }
    _refused(_write(tmp_path, _package(state=quantized)), "DiffQ quantizer")
    _refused(_write(tmp_path, [1, 2, 3]), "not a Demucs checkpoint")
    _refused(_write(tmp_path, {"klass": HDemucs}), "missing")


def test_wrong_constructor_arguments(tmp_path):
    package = _package()
    package["kwargs"].pop("sources")
    error = _refused(_write(tmp_path, package), "wrong constructor arguments")
    assert isinstance(error, ModelArgumentsError) and isinstance(error, TypeError)
    _refused(
        _write(
            tmp_path,
            _package(
                args=[
                    SOURCES,
                    2,
                    3,
                    4,
                    5,
                    6,
                    7,
                    8,
                    9,
                    10,
                    11,
                    12,
                    13,
                    14,
                    15,
                    16,
                    17,
                    18,
                    19,
                    20,
                    21,
                    22,
                    23,
                    24,
                    25,
                    26,
                    27,
                    28,
                    29,
                    30,
                    31,
                    32,
                    33,
                    34,
                    35,
                    36,
                    37,
                    38,
                    39,
                    40,
                ]
            ),
        ),
        "wrong constructor arguments",
    )
    # Unknown keyword arguments are dropped with a warning, as upstream does.
    with pytest.warns(UserWarning, match="from_the_future"):
        load_model(_write(tmp_path, _package(kwargs=dict(from_the_future=1))))


def test_weights_that_do_not_fit(tmp_path):
    state = _package()["state"]
    key = next(iter(state))
    state[key] = torch.zeros(3, 3)
    _refused(_write(tmp_path, _package(state=state)), "weights do not fit")


def test_inconsistent_architecture_is_one_line(tmp_path):
    # Passes every bound but the constructor itself refuses it.
    _refused(_write(tmp_path, _package(kwargs=dict(nfft=258))), "cannot build HDemucs")


@pytest.mark.parametrize(
    "content", [os.urandom(4096), b"hello, not a model\n", b""], ids=["random", "text", "empty"]
)
def test_random_bytes_are_not_a_checkpoint(tmp_path, content, monkeypatch):
    path = tmp_path / "random.th"
    path.write_bytes(content)
    error = _refused(path, "not a PyTorch checkpoint")
    assert "DEMUCS_TRUST_CHECKPOINTS" not in str(error)
    monkeypatch.setenv("DEMUCS_TRUST_CHECKPOINTS", "1")
    _refused(path, "not a PyTorch checkpoint")


def test_valid_checkpoint_still_loads(tmp_path):
    torch.manual_seed(0)
    model = HDemucs(**TINY)
    loaded = load_model(save_model(model, tmp_path / "ok.th", half=False))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])


# ------------------------------------------------------------------------- bags


@pytest.fixture
def repo(tmp_path) -> Path:
    """A folder with one tiny HTDemucs (``ht``) and one tiny HDemucs (``hd``)."""
    torch.manual_seed(0)
    save_model(HTDemucs(**configs.TINY_HTDEMUCS), tmp_path / "ht.th")
    save_model(HDemucs(**dict(TINY, samplerate=16000)), tmp_path / "hd.th")
    return tmp_path


@pytest.mark.parametrize(
    "text,match",
    [
        ("models: [ht]\n!!python/object/apply:os.system ['echo pwned']: 1\n", "not a valid bag"),
        ("models: !!python/object/apply:os.system ['echo pwned']\n", "not a valid bag"),
        ("models: [ht\n", "not a valid bag"),
        ("models: [ht]\nsegment: banana\n", "segment"),
        ("models: [ht]\nsegment: -3\n", "segment"),
        ("models: [ht]\nsegment: .nan\n", "segment"),
        ("models: ['../ht']\n", "model name"),
        ("models: ht\n", "needs a `models` list"),
        ("models: []\n", "1 to"),
        ("models: [ht]\nweights: [[1, x, 1, 1]]\n", "weights"),
        ("models: [ht]\nweights: [[1, 1]]\n", "invalid bag"),
        ("- just a list\n", "needs a `models` list"),
        (b"models: [\xff\xfe]\n", "not a valid bag|cannot read"),
    ],
)
def test_bad_bag_files(repo, text, match):
    (repo / "bag.yaml").write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ModelLoadingError, match=match) as info:
        get_model("bag", repo=repo)
    message = str(info.value)
    assert "\n" not in message
    assert "bag" in message


def test_bag_segment_longer_than_htdemucs_training_segment_is_ignored(repo):
    """As upstream 4.1.0: the HTDemucs member keeps its training segment; others take
    the bag's."""
    (repo / "bag.yaml").write_text("models: [ht, hd]\nsegment: 44\n")
    bag = get_model("bag", repo=repo)
    assert float(bag.models[0].segment) == float(configs.TINY_HTDEMUCS["segment"])
    assert bag.models[1].segment == 44
    (repo / "short.yaml").write_text("models: [ht]\nsegment: 0.25\n")
    assert get_model("short", repo=repo).models[0].segment == 0.25


def test_command_line_refuses_a_crafted_model_in_one_line(tmp_path):
    """A source named ``../../x`` once wrote stems outside ``-o`` with exit 0."""
    import subprocess
    import sys
    import wave

    models = tmp_path / "models"
    models.mkdir()
    sources = ["drums", "../../escaped", "other", "vocals"]
    torch.save(_package(kwargs=dict(sources=sources)), models / "evil.th")
    track = tmp_path / "track.wav"
    with wave.open(str(track), "wb") as file:
        file.setnchannels(2)
        file.setsampwidth(2)
        file.setframerate(44100)
        file.writeframes(b"\x00\x00" * 2 * 4410)
    out = tmp_path / "out"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "demucs.separate",
            "-n",
            "evil",
            "--repo",
            str(models),
            "-o",
            str(out),
            str(track),
        ],
        cwd=str(root),
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1"),
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "source name" in lines[0] and "evil.th" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.rglob("*"))
    assert not any(tmp_path.rglob("escaped*"))
