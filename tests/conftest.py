"""Shared fixtures: float64 by default for reference checks, fresh random seeds per test."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def rng_seed() -> int:
    """A fresh seed per test; printed, so a failing test shows the seed that reproduces it."""
    seed = random.SystemRandom().randrange(2**31)
    print(f"rng_seed={seed}")
    return seed


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def snakemake_env() -> dict[str, str]:
    """Environment in which Snakemake rules find the bpttbench CLI of this interpreter."""
    import sys

    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if shutil.which("snakemake", path=env["PATH"]) is None:
        pytest.skip("snakemake is not installed in this environment")
    return env


@pytest.fixture
def determinism(request):
    """torch.use_deterministic_algorithms(param) for the test (indirect parametrization),
    restored after."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(request.param)
    yield request.param
    torch.use_deterministic_algorithms(before)
