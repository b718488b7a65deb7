"""The sections of report.html, in order; each shows the contract figures that name it."""

from __future__ import annotations

from .spec import Section

# A section whose files are all absent from a result set is left out of its report.
SECTIONS: tuple[Section, ...] = (
    Section("Claims", "Each claim of the source texts and of the theory, measured against its "
            "prediction. A tolerance comes from the statistics (t or z standard errors over "
            "seeds or draws), from a floating-point error bound (the exactness rows: round-off) "
            "or from a stated finite-size or finite-length correction; a count that must be "
            "zero has tolerance 0. The note column of each row says which. A failing claim is "
            "shown as failing.", ("claims",)),
    Section("Reduced precision", "BPTT in float16 and bfloat16, under torch.autocast and with "
            "loss scaling (claim group 8_precision): the lag where a vanishing gradient becomes "
            "exactly 0 and an exploding one inf, predicted from the float64 rate of the same "
            "weights and the dtype's subnormal and largest values, and bfloat16 (and on GPUs "
            "TF32) rates against float64. Its rows of claims.csv are below. "
            "long_range_precision.csv: the task lengths a reduced precision fails that "
            "float32 solves, and whether loss scaling restores them (no rows unless "
            "long_range.precisions sweeps precisions).",
            ("claims", "long_range_precision")),
    Section("Gradient flow through time", "BPTT with a loss at the last step: the norm of the "
            "total derivative ∂L/∂h_t at every lag, its per-step growth rate and the horizon "
            "where it has fallen a million-fold.", ("summary",)),
    Section("Jacobian products and Lyapunov spectra", "The chain J_T⋯J_{t+1} of per-step "
            "Jacobians, tracked in log scale with QR re-orthonormalisation."),
    Section("Long-range dependencies in training", "What the gradients mean in practice: "
            "an unrolled cell plus a linear readout trained with a fixed budget on the tasks "
            "long_range.tasks names (adding, copy-memory), with and without gradient clipping. "
            "Solved: final loss below long_range.solved_fraction (default 0.1, recorded in the "
            "tables) of the best memoryless predictor's loss.",
            ("long_range_summary",)),
    Section("Performance", "The Jacobian engine against the alternatives a user would reach "
            "for (per-step torch loop, torch.func, NumPy, PyTorch's fused RNN modules: cuDNN "
            "on a GPU, ATen on the CPU) and, on a GPU, the CuPy kernels, on the same inputs "
            "with outputs checked against float64 before timing; medians of repeated calls, "
            "and each row against the machine's measured GEMM rate and copy bandwidth. "
            "Targets apply to H100/H200 GPUs.", ("bench_targets", "peak", "bench")),
    Section("Validation of the kernels", "Every custom kernel against the float64 reference.",
            ("validation",)),
)
