"""Fixtures of the kernel emulation tests: the emulated ``cupy`` in cupy_kernels."""

from __future__ import annotations

import shutil

import emucupy
import pytest


def _installed(monkeypatch, **settings):
    from bpttbench.jacobians import cupy_kernels

    if shutil.which(emucupy.CXX) is None:
        pytest.skip(f"no host C++ compiler {emucupy.CXX!r} (set CXX) to build the kernels")

    em = emucupy.install(monkeypatch, **settings)
    yield em
    cupy_kernels._module.cache_clear()
    cupy_kernels._optin_smem.cache_clear()


@pytest.fixture
def emu(monkeypatch):
    """An Emulator routed into cupy_kernels (threads in order, ftz as CuPy)."""
    yield from _installed(monkeypatch)


@pytest.fixture
def emu_ops(monkeypatch):
    """The same, handing out counting device arrays (emuarrays.py): our kernels' launches in
    ``emu.launches``, CuPy's own (array ops, memsets, copies) in ``emu.array_ops``."""
    yield from _installed(monkeypatch, count_ops=True)
