"""Fixtures of the kernel emulation tests: the emulated ``cupy`` in cupy_kernels."""

from __future__ import annotations

import shutil

import emucupy
import pytest


@pytest.fixture
def emu(monkeypatch):
    """An Emulator routed into cupy_kernels (threads in order, ftz as CuPy)."""
    from bpttbench.jacobians import cupy_kernels

    if shutil.which(emucupy.CXX) is None:
        pytest.skip(f"no host C++ compiler {emucupy.CXX!r} (set CXX) to build the kernels")

    em = emucupy.install(monkeypatch)
    yield em
    cupy_kernels._module.cache_clear()
    cupy_kernels._optin_smem.cache_clear()
