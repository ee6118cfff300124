"""Model repositories: local folders, checksums, downloads from a local HTTP server."""

import hashlib
from pathlib import Path

import pytest
import torch

from demucs.apply import BagOfModels
from demucs.repo import (
    AnyModelRepo,
    BagOnlyRepo,
    DownloadError,
    LocalRepo,
    ModelLoadingError,
    RemoteRepo,
    check_checksum,
)
from demucs.states import save_with_checksum, serialize_model
from tests.helpers import TinyNet, closed_port, serve


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_model(folder: Path, sig: str, seed: int = 0, checksum: bool = True) -> Path:
    torch.manual_seed(seed)
    package = serialize_model(TinyNet(), {})
    if checksum:
        return save_with_checksum(package, folder / f"{sig}.th")
    path = folder / f"{sig}.th"
    torch.save(package, path)
    return path


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_check_checksum(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    check_checksum(path, _sha(path)[:8])
    check_checksum(path, _sha(path)[:8].upper())
    with pytest.raises(ModelLoadingError, match="Invalid checksum"):
        check_checksum(path, "00000000")


def test_local_repo_with_and_without_checksum(tmp_path):
    path = _write_model(tmp_path, "aaaa1111")
    _write_model(tmp_path, "bbbb2222", checksum=False)
    (tmp_path / "notes.txt").write_text("ignored")
    repo = LocalRepo(tmp_path)
    assert repo.list_models() == ["aaaa1111", "bbbb2222"]
    assert repo.has_model("aaaa1111") and not repo.has_model(path.stem)
    assert isinstance(repo.get_model("aaaa1111"), TinyNet)
    assert isinstance(repo.get_model("bbbb2222"), TinyNet)
    with pytest.raises(ModelLoadingError, match="signature zzz"):
        repo.get_model("zzz")


def test_local_repo_bad_checksum(tmp_path):
    path = _write_model(tmp_path, "aaaa1111")
    path.rename(tmp_path / "aaaa1111-deadbeef.th")
    with pytest.raises(ModelLoadingError, match="Invalid checksum"):
        LocalRepo(tmp_path).get_model("aaaa1111")


def test_local_repo_duplicates(tmp_path):
    _write_model(tmp_path, "aaaa1111")
    _write_model(tmp_path, "aaaa1111", checksum=False)
    with pytest.raises(ModelLoadingError, match="Duplicate"):
        LocalRepo(tmp_path)


def test_bag_repo(tmp_path):
    _write_model(tmp_path, "aaaa1111", seed=0)
    _write_model(tmp_path, "bbbb2222", seed=1)
    (tmp_path / "mybag.yaml").write_text(
        "models: ['aaaa1111', 'bbbb2222']\nweights: [[1., 0.], [0.5, 1.]]\nsegment: 1\n"
    )
    (tmp_path / "broken.yaml").write_text("weights: [1]\n")
    (tmp_path / "wrong_weights.yaml").write_text("models: ['aaaa1111']\nweights: [[1.]]\n")
    model_repo = LocalRepo(tmp_path)
    repo = AnyModelRepo(model_repo, BagOnlyRepo(tmp_path, model_repo))
    bag = repo.get_model("mybag")
    assert isinstance(bag, BagOfModels)
    assert bag.weights == [[1.0, 0.0], [0.5, 1.0]]
    assert [m.segment for m in bag.models] == [1, 1]
    assert isinstance(repo.get_model("aaaa1111"), TinyNet)
    assert repo.has_model("mybag") and repo.has_model("aaaa1111") and not repo.has_model("x")
    with pytest.raises(ModelLoadingError, match="neither"):
        repo.get_model("x")
    with pytest.raises(ModelLoadingError, match="models"):
        repo.get_model("broken")
    with pytest.raises(ModelLoadingError, match="one per source"):
        repo.get_model("wrong_weights")


def test_remote_download_verify_and_cache(tmp_path, torch_home):
    served = tmp_path / "served" / "sub"
    served.mkdir(parents=True)
    path = _write_model(served, "aaaa1111")
    with serve(tmp_path / "served") as url:
        repo = RemoteRepo({"aaaa1111": url + "sub/" + path.name})
        assert isinstance(repo.get_model("aaaa1111"), TinyNet)
    cached = RemoteRepo.cache_dir() / path.name
    assert cached.parent == torch_home / "hub" / "checkpoints"
    assert cached.read_bytes() == path.read_bytes()
    assert list(cached.parent.iterdir()) == [cached]  # no partial file left
    # Second time: served from the cache, the server is gone.
    assert isinstance(repo.get_model("aaaa1111"), TinyNet)


def test_remote_bad_checksum_leaves_nothing(tmp_path, torch_home):
    served = tmp_path / "served"
    served.mkdir()
    good = _write_model(served, "aaaa1111")
    bad = good.rename(served / "aaaa1111-deadbeef.th")
    with serve(served) as url:
        repo = RemoteRepo({"aaaa1111": url + bad.name})
        with pytest.raises(ModelLoadingError, match="corrupted.*deleted"):
            repo.get_model("aaaa1111")
    cache = RemoteRepo.cache_dir()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_remote_corrupted_cache_is_deleted(tmp_path, torch_home):
    name = "aaaa1111-0123abcd.th"
    cache = RemoteRepo.cache_dir()
    cache.mkdir(parents=True)
    (cache / name).write_bytes(b"garbage")
    repo = RemoteRepo({"aaaa1111": f"http://127.0.0.1:{closed_port()}/{name}"})
    with pytest.raises(ModelLoadingError, match="deleted"):
        repo.get_model("aaaa1111")
    assert not (cache / name).exists()


def test_remote_unreachable(tmp_path, torch_home):
    url = f"http://127.0.0.1:{closed_port()}/aaaa1111-0123abcd.th"
    with pytest.raises(DownloadError) as info:
        RemoteRepo({"aaaa1111": url}).get_model("aaaa1111")
    message = str(info.value)
    assert message.startswith("cannot download aaaa1111: no network (")
    assert "--repo DIR" in message and "\n" not in message
    cache = RemoteRepo.cache_dir()
    assert not cache.exists() or list(cache.iterdir()) == []


def test_remote_http_error(tmp_path, torch_home):
    (tmp_path / "empty").mkdir()
    with serve(tmp_path / "empty") as url:
        with pytest.raises(DownloadError, match="HTTP 404"):
            RemoteRepo({"aaaa1111": url + "aaaa1111-0123abcd.th"}).get_model("aaaa1111")


def test_remote_unknown_signature():
    with pytest.raises(ModelLoadingError, match="signature nope"):
        RemoteRepo({}).get_model("nope")
