"""glibc malloc settings (demucs.allocator): applied where available, opt-out honoured."""
import platform
import subprocess
import sys

import pytest

from demucs.allocator import bound_allocator, tune_allocator


def test_opt_out(monkeypatch):
    monkeypatch.setenv("DEMUCS_NO_MALLOC_TUNING", "1")
    assert not tune_allocator()
    assert not bound_allocator()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("name", ["tune_allocator", "bound_allocator"])
def test_applies_on_glibc(name):
    code = f"from demucs.allocator import {name}; assert {name}()"
    subprocess.run([sys.executable, "-c", code], check=True)
