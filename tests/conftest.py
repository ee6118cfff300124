"""Shared fixtures: the upstream oracle, threads, seeds."""

import os

import pytest
import torch

from tests import oracle as _oracle
from tests.helpers import build_tiny_repo

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def oracle():
    """The upstream 4.0.1 runner (tests/oracle.py), under ``oracle.require``."""
    _oracle.require()
    return _oracle


@pytest.fixture(scope="session")
def oracle410():
    """The upstream 4.1.0 runner (``oracle.version("4.1.0")``), under ``oracle.require``."""
    _oracle.require("4.1.0")
    return _oracle.version("4.1.0")


@pytest.fixture(scope="session", params=_oracle.VERSIONS)
def any_oracle(request):
    """Each upstream version's runner in turn (4.0.1, then 4.1.0)."""
    _oracle.require(request.param)
    return _oracle.version(request.param)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory):
    """A --repo folder with bag ``tiny`` (one tiny Demucs) and, when HTDemucs is there,
    ``tinyht`` (tests/helpers.py ``build_tiny_repo``), upstream's checkpoint format."""
    return build_tiny_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models run fastest on one thread (and do not fight over shared cores).
    Use with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
