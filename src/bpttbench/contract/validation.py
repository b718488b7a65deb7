"""Contract of the validation stage: every custom CUDA kernel against float64."""

from __future__ import annotations

from .spec import make_table

STAGE = "validation"
VALIDATION_DOCS = {
    "kernel": "custom CUDA kernel checked (src/bpttbench/kernels/*.cu)",
    "shape": "shape of the check, its dimensions joined by x",
    "dtype": "float32 or float64",
    "max_rel_err": "max abs(got - ref) / max(1, abs(ref)) for accumulated logs (chains, QR "
    "ln abs(diag R)), max abs(got - ref) / max abs(ref) for matrices (Jacobians, Q) and the "
    "forward record's values, abs(got / ref - 1) for the BPTT deltas' per-lag norms, "
    "elementwise abs(got - ref) / abs(ref) for the forward record's derivative factors; "
    "against the numpy float64 reference on the kernel's exact inputs",
    "tolerance": "allowed max_rel_err: the kernel and dtype's fixed tolerance, or for a "
    "float32 RNN chain with k = H, 16 times float32 Householder QR's error on the same inputs "
    "where larger (validation.kernels.tolerance)",
    "passed": "max_rel_err <= tolerance",
}
TABLES = (
    make_table("validation", STAGE, "validation.csv", ("kernel", "shape", "dtype"),
               VALIDATION_DOCS, {"kernel": "str", "shape": "str", "dtype": "str",
                                 "passed": "bool"}),
)
FIGURES = ()
