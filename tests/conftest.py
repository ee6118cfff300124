"""Shared fixtures: the upstream oracle, threads, seeds."""
import os

import pytest
import torch

from tests import oracle as _oracle

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def oracle():
    """The upstream 4.0.1 runner (tests/oracle.py). Skips locally if not installed;
    fails in CI (DEMUCS_REQUIRE_ORACLE=1)."""
    if not _oracle.available():
        if os.environ.get("DEMUCS_REQUIRE_ORACLE"):
            pytest.fail("upstream oracle missing: run `make oracle`")
        pytest.skip("upstream oracle not installed (make oracle)")
    return _oracle


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
