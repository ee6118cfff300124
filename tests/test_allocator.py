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


def test_ensure_tuned_for_torch_once(monkeypatch):
    from demucs import allocator

    calls = []
    monkeypatch.setattr(allocator, "_tuned_for_torch", None)
    monkeypatch.setattr(allocator, "tune_allocator", lambda: calls.append(1) or True)
    assert allocator.ensure_tuned_for_torch()
    assert allocator.ensure_tuned_for_torch()
    assert calls == [1]


def test_ensure_tuned_for_torch_opt_out(monkeypatch):
    from demucs import allocator

    monkeypatch.setattr(allocator, "_tuned_for_torch", None)
    monkeypatch.setenv("DEMUCS_NO_MALLOC_TUNING", "1")
    assert not allocator.ensure_tuned_for_torch()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_ensure_tuned_and_release_in_fresh_process():
    code = (
        "from demucs.allocator import ensure_tuned_for_torch, release_memory; "
        "assert ensure_tuned_for_torch() and ensure_tuned_for_torch(); "
        "assert release_memory() in (True, False)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
