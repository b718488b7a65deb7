"""Validation stage: every custom CUDA kernel against the float64 NumPy reference.

``bpttbench validation kernels --out tables/validation.csv [--seed N]`` needs an NVIDIA GPU
and CuPy; it writes the ``validation`` table (kernel, shape, dtype, max_rel_err, tolerance,
passed; :mod:`.kernels`). On a machine without one it refuses with the reason, so a CPU
result set never carries a validation table it did not measure.
"""

from __future__ import annotations

import argparse


def run_validation(out: str, seed: int = 0) -> int:
    from bpttbench.jacobians.cupy_kernels import cupy_available

    from .kernels import validate_kernels, write_validation_csv

    usable, why = cupy_available()
    if not usable:
        raise SystemExit(f"kernel validation needs a CUDA GPU with CuPy: {why}")
    results = validate_kernels(seed=seed)
    write_validation_csv(results, out)
    failed = [r for r in results if not r["passed"]]
    for r in results:
        flag = "ok  " if r["passed"] else "FAIL"
        print(f"{flag} {r['kernel']:<28} {r['shape']:<16} {r['dtype']:<8} "
              f"max_rel_err={r['max_rel_err']:.3g} tol={r['tolerance']:.1g}")
    print(f"{len(results) - len(failed)}/{len(results)} kernel checks passed; wrote {out}")
    return 0  # failures are data in the table; the report shows them


def register(sub: argparse._SubParsersAction) -> None:
    """The ``validation`` stage and its verb ``kernels``."""
    from bpttbench.cli_options import add_out, add_stage

    verbs = add_stage(sub, "validation", "check the custom CUDA kernels (GPU only)")
    p = verbs.add_parser("kernels",
                         help="check every CUDA kernel against the float64 reference (GPU only)")
    add_out(p, "validation.csv to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_validation(a.out, a.seed))
