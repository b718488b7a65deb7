"""Precision settings by name, without torch: the dtype names, their sizes, and
:class:`Precision` (what a run computes in), so that the planning layer can expand jobs and
estimate memory where torch cannot be imported. ``bpttbench.precision`` maps the names to
torch dtypes (``DTYPES``) and runs BPTT in them."""

from __future__ import annotations

from dataclasses import dataclass

#: bytes per element of every dtype a config may name (the schema's enum)
DTYPE_BYTES: dict[str, int] = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}
LOW_DTYPES: tuple[str, ...] = ("float16", "bfloat16")
DYNAMIC = "dynamic"


def check_dtype(name: str, allowed: tuple[str, ...] | None = None) -> str:
    """``name`` if it is a known dtype (and in ``allowed``), else a ValueError naming both."""
    allowed = tuple(DTYPE_BYTES) if allowed is None else allowed
    if name not in allowed:
        raise ValueError(f"unknown dtype {name!r}; allowed: {', '.join(allowed)}")
    return name


@dataclass(frozen=True)
class Precision:
    """One precision setting: the model's dtype, autocast, and the loss scale.

    ``autocast`` None runs everything in ``dtype``; ``float16``/``bfloat16`` runs forward
    and loss under ``torch.autocast`` with the model in ``dtype`` (float32, as users
    train). ``loss_scale`` 1 means none, a number S a static scale, ``dynamic`` the
    GradScaler rule (start 2^16, halve on inf/NaN and try again).
    """

    dtype: str = "float32"
    autocast: str | None = None
    loss_scale: float | str = 1.0

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        if self.autocast is not None and self.autocast not in LOW_DTYPES:
            raise ValueError(f"precision autocast {self.autocast!r}; allowed: none, "
                             f"{', '.join(LOW_DTYPES)}")
        if self.autocast is not None and self.dtype != "float32":
            raise ValueError(f"autocast runs a float32 model; dtype is {self.dtype}")
        if self.loss_scale != DYNAMIC and not (isinstance(self.loss_scale, int | float)
                                               and self.loss_scale > 0):
            raise ValueError(f"loss_scale {self.loss_scale!r}; allowed: a number > 0 or dynamic")

    @property
    def compute_dtype(self) -> str:
        """The dtype the matrix products run in."""
        return self.autocast or self.dtype

    @property
    def label(self) -> str:
        base = f"autocast-{self.autocast}" if self.autocast else self.dtype
        if self.loss_scale == DYNAMIC:
            return f"{base}, S dynamic"
        return base if self.loss_scale == 1 else f"{base}, S={self.loss_scale:g}"

    @property
    def is_default(self) -> bool:
        return self.autocast is None and self.loss_scale == 1 and self.dtype in ("float32",
                                                                                  "float64")
