"""Contract of the bench stage: timed ops against float64-checked outputs, the roofline."""

from __future__ import annotations

from .spec import Figure, make_table

STAGE = "bench"
_DEVICE_KINDS = {"device": "str", "device_name": "str", "dtype": "str", "threads": "int"}

BENCH_DOCS = {
    "op": "chain, lyapunov, lstm_jacobians, gru_jacobians, bptt_rnn, bptt_lstm or bptt_gru "
    "(docs/bench.md)",
    "model": "recurrent cell of the op",
    "variant": "cupy (our CUDA kernels), torch (per-step loop; BPTT: our unrolled cell), "
    "torch_func (vmap(vjp)/vmap(jacrev)), numpy (CPU), fused (torch.nn RNN/LSTM/GRU, cuDNN)",
    "hidden": "hidden size H",
    "batch": "batch size B",
    "seq_len": "sequence length T (steps)",
    "k": "frame size of the chain ops (vectors carried through the chain); empty otherwise",
    "label": "grid (the size sweep) or the label of an extra shape (e.g. deepbench)",
    "status": "ok (checked, then timed), mismatch (output disagreed with float64: not "
    "timed), skipped (see reason), oom or error",
    "reason": "why a row is skipped, mismatched or failed",
    "speedup_vs_torch": "median_ms of the torch variant / median_ms of this row (same op and "
    "size); > 1 = faster than torch",
    "fraction_of_peak": "achieved_gflops / attainable_gflops (roofline bound of the device)",
    "bound": "compute or memory: which roofline ceiling bounds the op at its intensity",
    "attainable_gflops": "min(peak_gflops, intensity x peak_gbps), GFLOP/s",
    "peak_gflops": "measured GEMM rate of the row's device in the bench dtype, GFLOP/s "
    "(peak.csv)",
    "peak_gbps": "measured copy bandwidth of the row's device, GB/s (peak.csv)",
    "n": "timed calls (after warm-up)",
    "median_ms": "median wall time of one call, milliseconds (CUDA events on a GPU)",
    "q25_ms": "25% quantile of the call times, ms",
    "q75_ms": "75% quantile of the call times, ms",
    "iqr_ms": "inter-quartile range q75 - q25 of the call times, ms",
    "min_ms": "fastest call, ms",
    "mean_ms": "mean call time, ms",
    "flops": "floating-point operations the op must do (formulas in docs/bench.md)",
    "bytes": "compulsory device-memory traffic of the op in bytes (docs/bench.md)",
    "intensity": "flops / bytes, FLOP per byte",
    "achieved_gflops": "flops / median time, GFLOP/s",
    "achieved_gbps": "bytes / median time, GB/s",
    "check_err": "max error of the output against the float64 reference on the check "
    "prefix (logs: abs error / max(1, |ref|); arrays: max abs error / max |ref|)",
    "check_tol": "tolerance of check_err (float32 1e-4, float64 1e-9, float32 with TF32 "
    "on a GPU 2e-2)",
    "check_keys": "outputs compared in the check",
    "check_seq_len": "steps of the check prefix (the first steps of the same inputs)",
    "check_batch": "batch elements of the check prefix",
    "device": "where the row ran: cpu or cuda",
    "device_name": "GPU or CPU model",
    "dtype": "float32 or float64",
    "allow_tf32": "whether TF32 matmuls were allowed",
    "threads": "threads of the library that ran the row: torch.get_num_threads(), or "
    "NumPy's OpenBLAS threads for numpy rows (-1 = unknown)",
    "impl": "what ran: kernel path, cuDNN version, library version",
    "memory_estimate_gib": "rough working-set estimate used to skip sizes, GiB",
}

PEAK_DOCS = {
    "device": "cpu or cuda",
    "device_name": "GPU or CPU model",
    "quantity": "gemm_flops (square matmul rate) or copy_bandwidth (tensor copy, read + "
    "write bytes)",
    "method": "torch.matmul, numpy.matmul, torch copy_ or numpy.copyto",
    "size": "matrix side n (GEMM) or bytes of the copied buffer",
    "dtype": "element type",
    "threads": "torch.get_num_threads(), or NumPy's OpenBLAS threads for numpy methods "
    "(-1 = unknown)",
    "n": "timed calls",
    "median_ms": "median time of one call, ms",
    "iqr_ms": "inter-quartile range of the call times, ms",
    "value": "2 n^3 / median time (FLOP/s) or 2 x size / median time (B/s)",
    "unit": "FLOP/s or B/s",
    "peak": "true for the highest value of its quantity and device (the roofline ceiling)",
}

TARGETS_DOCS = {
    "target": "target id (benchmarks/targets.yaml)",
    "description": "what the target asks",
    "op": "op the target is about",
    "variant": "variant measured",
    "metric": "speedup (baseline median / variant median) or fraction_of_peak",
    "baseline": "variant the speedup is relative to",
    "threshold": "value the measured metric must reach",
    "aggregate": "how matching rows are combined (min = every row must reach it)",
    "measured": "the aggregated metric; empty when not applicable",
    "met": "measured >= threshold; empty when not applicable",
    "rows": "timed rows that entered the aggregate",
    "note": "which rows, or why the target does not apply here",
}


BENCH_KEYS = ("op", "model", "variant", "hidden", "batch", "seq_len", "k")
BENCH_KINDS = {
    "op": "str", "model": "str", "variant": "str", "hidden": "int", "batch": "int",
    "seq_len": "int", "k": "int", "label": "str", "status": "str", "reason": "str",
    "bound": "str", "n": "int", "check_keys": "str", "check_seq_len": "int",
    "check_batch": "int", "allow_tf32": "bool", "impl": "str", **_DEVICE_KINDS,
}
BENCH_ROLES = {
    **{c: "timing" for c in ("median_ms", "q25_ms", "q75_ms", "iqr_ms", "min_ms", "mean_ms")},
    **{c: "rate" for c in ("attainable_gflops", "peak_gflops", "peak_gbps", "achieved_gflops",
                           "achieved_gbps")},
    "speedup_vs_torch": "ratio", "fraction_of_peak": "ratio",
}
#: Columns the collect step adds to the parts (speed-up and the roofline of the device).
DERIVED = ("speedup_vs_torch", "fraction_of_peak", "bound", "attainable_gflops",
           "peak_gflops", "peak_gbps")

TABLES = (
    make_table("bench", STAGE, "bench.parquet", BENCH_KEYS, BENCH_DOCS, BENCH_KINDS,
               BENCH_ROLES, compare="timing"),
    # one timing job's rows (cells/bench/<part>.parquet), before collect adds DERIVED
    make_table("bench_part", STAGE, "bench_part.parquet", BENCH_KEYS,
               {c: doc for c, doc in BENCH_DOCS.items() if c not in DERIVED},
               {c: k for c, k in BENCH_KINDS.items() if c not in DERIVED},
               {c: r for c, r in BENCH_ROLES.items() if c not in DERIVED},
               csv_twin=False, intermediate=True),
    make_table("peak", STAGE, "peak.csv", ("device", "quantity", "method", "size", "dtype"),
               PEAK_DOCS,
               {"quantity": "str", "method": "str", "size": "int", "n": "int", "unit": "str",
                "peak": "bool", **_DEVICE_KINDS},
               {"median_ms": "timing", "iqr_ms": "timing"}),
    make_table("bench_targets", STAGE, "bench_targets.csv", ("target",), TARGETS_DOCS,
               {"target": "str", "description": "str", "op": "str", "variant": "str",
                "metric": "str", "baseline": "str", "aggregate": "str", "met": "bool",
                "rows": "int", "note": "str"}),
)

FIGURES = (
    Figure("bench_speedup", STAGE, ("bench",), "bpttbench.bench.plots:bench_speedup",
           "Performance", "Performance"),
    Figure("bench_roofline", STAGE, ("bench", "peak"), "bpttbench.bench.plots:bench_roofline",
           "Performance", "Performance"),
)
