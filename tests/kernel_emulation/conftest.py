"""Fixtures of the kernel emulation tests: the emulated ``cupy`` in cupy_backend."""

from __future__ import annotations

import pytest

import emucupy


@pytest.fixture
def emu(monkeypatch):
    """An Emulator routed into cupy_backend (threads in order, ftz as CuPy)."""
    from bpttbench.jacobians import cupy_backend

    em = emucupy.install(monkeypatch)
    yield em
    cupy_backend._module.cache_clear()
