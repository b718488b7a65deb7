"""Frame and chunk utilities of the Jacobian engine (the leaf layer: NumPy only).

The chain carries a frame of k orthonormal columns through the adjoint Jacobians. Every
backend starts from the same fixed frame (float64, seeded), so their results can be
compared element by element; the full-frame pass (:mod:`.spectrum`) extends it to D
columns whose first k are that frame. Jacobians of the gated cells are built in time
chunks of at most :data:`CHUNK_BYTES`.

Nothing here imports from the package: every other engine module may import it.
"""

from __future__ import annotations

import numpy as np

#: bytes of Jacobians built at once for the LSTM/GRU chains (time chunks of [n, B, D, D])
CHUNK_BYTES = 64 * 2**20
#: seed of the initial orthonormal frame (same frame for every batch element and backend)
FRAME_SEED = 20240917


def initial_frame(dim: int, k: int, seed: int = FRAME_SEED) -> np.ndarray:
    """A fixed random orthonormal [dim, k] frame (float64, sign-fixed QR of a Gaussian)."""
    a = np.random.default_rng(seed).standard_normal((dim, k))
    q, r = np.linalg.qr(a)
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def full_frame(dim: int, k: int) -> np.ndarray:
    """An orthonormal D x D frame whose first k columns are ``initial_frame(dim, k)``, so
    that the full pass's first k columns are the k-frame chain (QR every step)."""
    first = initial_frame(dim, k)
    rest = np.random.default_rng(FRAME_SEED + 1).standard_normal((dim, dim - k))
    q, r = np.linalg.qr(np.concatenate([first, rest], axis=1))
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    q[:, :k] = first  # equal up to round-off; keep the k-frame's columns exactly
    return q


def chunk_steps(batch: int, dim: int, itemsize: int, budget: int = CHUNK_BYTES) -> int:
    """Time steps of [B, D, D] Jacobians that fit in ``budget`` bytes (at least 1)."""
    return max(1, budget // max(1, batch * dim * dim * itemsize))


def is_qr_lag(lag: int, qr_every: int, steps: int) -> bool:
    """Whether the chain re-orthonormalises at ``lag`` (every ``qr_every`` lags and the last)."""
    return lag % qr_every == 0 or lag == steps
