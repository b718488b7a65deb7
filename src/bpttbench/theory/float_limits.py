"""Float32 limits and the overflow / underflow onset of an exponential product (section 5)."""

from __future__ import annotations

import math

import numpy as np

from .random_matrices import _check_n

# --------------------------------------------------------------------------------------
# float32 limits (IEEE 754 binary32)
# --------------------------------------------------------------------------------------

FLOAT32_MAX: float = float(np.finfo(np.float32).max)  # 3.4028234663852886e38
FLOAT32_TINY: float = float(np.finfo(np.float32).tiny)  # smallest normal, 1.1754944e-38
FLOAT32_SMALLEST_SUBNORMAL: float = float(np.float32(1.401298464324817e-45))
LOG_FLOAT32_MAX: float = math.log(FLOAT32_MAX)  # 88.72283905206835


# --------------------------------------------------------------------------------------
# 5. Float32 overflow / underflow onset
# --------------------------------------------------------------------------------------


def float32_overflow_lag(
    rate: float,
    log_start: float,
    *,
    squared: bool = False,
    hidden_size: int | None = None,
) -> float:
    """Lag L at which ln||delta|| = log_start + rate * L reaches the float32 overflow threshold.

    Threshold on ln||delta||:

    * default: ln(FLOAT32_MAX) = 88.7228... -- the norm itself is not representable; also
      the earliest lag at which one float32 element can overflow (max_i |delta_i| <=
      ||delta||), reached when delta is concentrated on one coordinate;
    * ``squared=True``: 0.5 ln(FLOAT32_MAX) = 44.3614... -- a norm computed as sqrt of a
      float32 sum of squares overflows there (``torch.linalg.vector_norm`` on a float32
      CPU tensor does: ||(1e20,)*4|| -> inf). bpttbench.gradients casts to float64
      before taking norms, so there the element criterion applies instead;
    * ``hidden_size=H``: ln(FLOAT32_MAX) + 0.5 ln H -- the latest lag: even a perfectly
      spread delta (all |delta_i| = ||delta|| / sqrt(H)) has overflowed elements.

    Returns the continuous crossing (threshold - log_start) / rate; the first integer lag
    with ||delta|| strictly above threshold is floor(L) + 1. 0.0 if log_start is already
    at or above the threshold, ``inf`` if rate <= 0 (never overflows).
    """
    if squared and hidden_size is not None:
        raise ValueError("squared and hidden_size are exclusive criteria")
    thr = LOG_FLOAT32_MAX
    if squared:
        thr = 0.5 * LOG_FLOAT32_MAX
    elif hidden_size is not None:
        _check_n(hidden_size)
        thr = LOG_FLOAT32_MAX + 0.5 * math.log(hidden_size)
    if log_start >= thr:
        return 0.0
    if rate <= 0.0:
        return math.inf
    return (thr - log_start) / rate


def float32_underflow_lag(
    rate: float, log_start: float, *, subnormal: bool = True, squared: bool = False
) -> float:
    """Lag at which ln||delta|| = log_start + rate * L (rate < 0) falls to float32 underflow.

    Threshold: ln of the smallest positive subnormal 1.4e-45 (-103.28; values below round
    to 0), or with ``subnormal=False`` of the smallest normal 1.18e-38 (-87.34; precision
    degrades below). ``squared=True`` halves the threshold (a float32 sum of squares
    underflows first: ||(1e-30,)*4|| -> 0 in float32). Note: the elements of a spread
    delta are ~||delta|| / sqrt(H), so they underflow about 0.5 ln H earlier in ln||delta||.
    Returns the continuous lag; 0.0 if already below, ``inf`` if rate >= 0.
    """
    thr = math.log(FLOAT32_SMALLEST_SUBNORMAL if subnormal else FLOAT32_TINY)
    if squared:
        thr *= 0.5
    if log_start <= thr:
        return 0.0
    if rate >= 0.0:
        return math.inf
    return (thr - log_start) / rate
