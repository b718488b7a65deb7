"""Tidy tables of a result set: one observation per row, Parquet (plus a CSV twin when small).

``COLUMNS`` documents every column of every contract table; the docs are written next to
the tables (``tables/COLUMNS.md``) and into the Parquet schema metadata.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .io import is_record, read_intermediates, write_text, write_with

CELL_KEYS = ["model", "init", "hidden", "seq_len", "weight_scale", "seed"]
CSV_TWIN_MAX_ROWS = 20_000

_CELL_DOCS = {
    "model": "recurrent cell: rnn_tanh, rnn_relu, rnn_linear, lstm or gru",
    "init": "initialisation of W_hh: orthogonal, gaussian or torch_default",
    "hidden": "hidden size H",
    "seq_len": "sequence length T (steps of BPTT)",
    "weight_scale": "recurrent weight scale s (orthogonal: every singular value of W_hh is s)",
    "seed": "random seed of weights, inputs and readout",
}

COLUMNS: dict[str, dict[str, str]] = {
    "gradient_flow": {
        **_CELL_DOCS,
        "lag": "k = T - t, steps back from the loss (0 = the last step)",
        "log_grad_norm": "mean over the batch of ln||dL/dh_{T-k}||_2 (natural log; -inf = float "
        "underflow to 0, +inf = overflow, NaN = NaN)",
        "log_grad_norm_std": "standard deviation over the batch of ln||dL/dh_{T-k}||_2",
        "log_grad_norm_q05": "5% quantile over the batch of ln||dL/dh_{T-k}||_2",
        "log_grad_norm_q25": "25% quantile over the batch of ln||dL/dh_{T-k}||_2",
        "log_grad_norm_q50": "median over the batch of ln||dL/dh_{T-k}||_2",
        "log_grad_norm_q75": "75% quantile over the batch of ln||dL/dh_{T-k}||_2",
        "log_grad_norm_q95": "95% quantile over the batch of ln||dL/dh_{T-k}||_2",
        "n_finite": "batch elements whose ln||dL/dh_{T-k}|| is finite",
        "log_grad_norm_c": "LSTM only: mean over the batch of ln||dL/dc_{T-k}||_2 (natural log)",
    },
    "summary": {
        **_CELL_DOCS,
        "growth_rate": "least-squares slope of mean ln||dL/dh_{T-k}|| against k, natural log per "
        "step (negative = vanishing, positive = exploding); finite lags only",
        "growth_fit_r2": "R^2 of that linear fit (1 = exactly exponential in the lag)",
        "growth_rate_steady": "the same slope fitted on lags warmup_align .. T - warmup_forward "
        "only (the transients at both ends left out; see the lyapunov table), natural log per "
        "step",
        "horizon": "first lag k where ||dL/dh_{T-k}|| / ||dL/dh_T|| < 1e-6 (batch mean of logs); "
        "empty if never within T",
        "lyapunov_max": "largest Lyapunov exponent of the Jacobian chain, natural log per step, "
        "after the forward and alignment warm-ups (lyapunov table), batch mean",
        "lyapunov_max_se": "standard error of lyapunov_max over the batch (given the weights; "
        "the spread over seeds is in the rows of the other seeds)",
        "lyapunov_sum": "sum of all D Lyapunov exponents (full frame) over the same window, "
        "natural log per step",
        "mean_log_abs_det": "mean of ln|det J_t| over the same steps and the batch, by LU: "
        "equals lyapunov_sum exactly in exact arithmetic",
        "lyapunov_det_gap": "lyapunov_sum - mean_log_abs_det: the engine's round-off (a "
        "consistency check, not a measurement)",
        "spectral_norm_whh": "largest singular value of W_hh (max over gate blocks)",
        "spectral_radius_whh": "largest |eigenvalue| of W_hh (max over gate blocks)",
        "status": "ok, overflow (inf appeared), nan (NaN appeared), too_large (its estimated "
        "peak memory exceeded the free memory: not run; reason in error) or error (see the "
        "cell log)",
        "first_nonfinite_lag": "first lag where some dL/dh_{T-k} or dL/dc_{T-k} is inf or NaN",
        "first_nonfinite_step": "first forward step t where a state h_t (or c_t) is inf or NaN",
        "underflow_lag": "first lag where some batch element's dL/dh_{T-k} is exactly the zero "
        "vector (||.|| underflowed to 0)",
        "underflow_lag_first": "first lag where some batch element's first entry of dL/dh_{T-k} "
        "is exactly 0 (an underflow, or for rnn_relu also a zero derivative)",
        "precision": "dtype the cell ran in: float32, float64, float16, bfloat16, or "
        "autocast-<dtype> (float32 model under torch.autocast)",
        "compute_dtype": "dtype of the matrix products (the autocast dtype under autocast)",
        "grad_dtype": "dtype of the dL/dh_t tensors autograd returned (float32 under autocast)",
        "loss_scale": "S the loss was multiplied by before BPTT (final S when dynamic); the "
        "log norms have ln S taken off",
        "loss_scale_mode": "static or dynamic (torch.amp.GradScaler rule: 2^16, halved on inf/NaN)",
        "loss_scale_backoffs": "halvings of a dynamic loss scale (0 when static)",
        "chain_dtype": "dtype the Jacobian chain ran in (float32 for float16/bfloat16 cells: "
        "the same rounded weights, upcast)",
        "growth_rate_float64": "growth rate of the same cell in float64 (same weights and inputs, "
        "upcast), fitted over the lags where the measured ln||delta|| is finite; empty unless "
        "the cell ran in float16/bfloat16, autocast or with a loss scale",
        "rate_error_vs_float64": "growth_rate minus growth_rate_float64 (natural log per step); "
        "empty where growth_rate_float64 is",
        "loss": "loss L at step T summed over the batch",
        "jacobian_backend": "engine that computed the Jacobian chain: numpy, torch or cupy",
        "device": "cpu or cuda",
        "wall_s": "wall time of the cell in seconds (BPTT + Jacobian chain)",
        "started_at": "UTC time the cell started (ISO 8601)",
        "finished_at": "UTC time the cell finished (ISO 8601)",
        "error": "error message when status is error or too_large (the reason), or when only "
        "the Jacobian chain failed",
        "device_index": "physical index of the GPU the cell ran on (empty on the CPU)",
        "memory_estimate_gib": "peak memory of the cell estimated from its shape before it ran, "
        "GiB (bpttbench.memory)",
    },
    "lyapunov": {
        **_CELL_DOCS,
        "index": "1 = largest exponent",
        "exponent": "Lyapunov exponent of the Jacobian chain (an input-driven random dynamical "
        "system: it depends on the input statistics), natural log per step, over lags "
        "warmup_align+1 .. T-warmup_forward, batch mean",
        "exponent_std": "standard deviation of the exponent over the batch",
        "exponent_se": "standard error of the batch mean (given the weights)",
        "exponent_first_half": "the exponent over the first half of the window (lags from the "
        "loss), batch mean, QR-frame column order: convergence check",
        "exponent_second_half": "the exponent over the second half of the window",
        "warmup_forward": "steps after s_0 left out (forward transient from the zero state)",
        "warmup_align": "lags after the loss left out (alignment transient of the QR frame)",
    },
    "chain_spectrum": {
        **_CELL_DOCS,
        "lag": "k: the chain P_{T,T-k} = J_T ... J_{T-k+1}",
        "index": "1 = largest singular value",
        "log_sv": "ln sigma_index(P_{T,T-k}), the true singular value of the product (from the "
        "accumulated triangular factors of a full frame), batch mean (natural log); NaN where "
        "float64 cannot resolve it (below 1e-11 sigma_1 within a block of close values)",
        "frame_log_stretch": "log stretching of column index of the QR frame after k steps, "
        "batch mean: not a singular value (only its sum over a full frame is ln|det P|)",
    },
    # Claims stage (bpttbench.claims): each claim measured against its prediction.
    "claims": {
        "claim_id": "unique id of the check: claim number, letter, and the condition "
        "(e.g. 1b.rnn_tanh.s0.5)",
        "description": "the statement that is checked",
        "measured": "the measured value (unit in column unit)",
        "predicted": "the value theory or the seed text predicts",
        "tolerance": "allowed deviation, from the statistics (t or z standard errors), a "
        "floating-point error bound or a stated finite-size correction; see note",
        "passed": "True when measured and predicted agree as the comparison column states",
        "comparison": "|m-p|<=tol (equal within tolerance), m<=p+tol (upper bound or count), "
        "m>=p-tol (lower bound) or p<=m<=p+tol (inside the predicted interval)",
        "kind": "prediction (can fail if the theory or seed text is wrong), exactness (an "
        "identity of the mathematics or the code: fails only by a bug) or method agreement "
        "(two numerical methods for one quantity)",
        "score": "deviation in units of the tolerance; the row passes exactly when score <= 1 "
        "(inf: a count that should be zero is not)",
        "claim": "the claim (experiment) the row belongs to: 1_depth ... 7_gating",
        "condition": "model, sizes and parameters of the row",
        "n": "number of independent samples or checks behind the measured value",
        "stderr": "standard error of the measured value (or of measured - predicted)",
        "unit": "unit of measured, predicted and tolerance (nats are natural logs)",
        "source": "where the claim comes from (seed text, paper, bpttbench.theory function)",
        "note": "how the tolerance was set and, for a failing row, why theory and "
        "measurement disagree",
    },
    "claim_curves": {
        "claim": "the claim the curve belongs to (its figure is figures/claim_<claim>.png)",
        "panel": "panel of the figure",
        "group": "curve within the panel (colour and legend entry)",
        "kind": "measured (solid), predicted (dashed), bound (dotted), points (markers with "
        "error bars), band (line with spread), vline / hline (reference lines)",
        "x": "abscissa (see the panel's axis label)",
        "y": "ordinate; natural logs where it is a log",
        "y_err": "error bar (points: tolerance-sized) or half-width of the band",
    },
    # Long-range stage (bpttbench.long_range): training on the adding and copy tasks.
    "long_range": {
        "task": "adding (sum of two marked values, MSE) or copy (recall 10 symbols, cross-entropy)",
        "model": _CELL_DOCS["model"],
        "init": "initialisation of W_hh (identity = W_hh = s I, the IRNN for rnn_relu)",
        "hidden": _CELL_DOCS["hidden"],
        "seq_len": "task length T: adding, sequence length; copy, the delay (sequence T + 20 steps)",
        "clip": "gradient clipping threshold on the global L2 norm; empty = no clipping",
        "seed": "random seed of weights, readout, training batches and evaluation set",
        "precision": "precision of the run: float32, float64, float16, bfloat16 or "
        "autocast-<dtype> (float32 model under torch.autocast), then the loss scale if any "
        "(\", S=1024\" or \", S dynamic\")",
        "final_loss": "evaluation loss after the last update (adding: MSE; copy: cross-entropy, "
        "nats per step, natural log)",
        "baseline_loss": "loss of the best memoryless predictor: adding 1/6, copy 10 ln 8/(T+20)",
        "final_loss_ratio": "final_loss / baseline_loss (1 = no better than the baseline)",
        "solved": "final_loss < solved_fraction (default 0.1) x baseline_loss",
        "steps_to_solve": "first evaluation step with loss < solved_fraction x baseline; empty "
        "if never",
        "best_loss": "lowest evaluation loss seen during training (including step 0)",
        "n_updates": "training steps attempted",
        "n_clipped": "updates whose gradient was rescaled to the clip norm",
        "n_skipped": "updates skipped because the loss or gradient was inf or NaN",
        "grad_norm_max": "largest global gradient norm before clipping over the run",
        "horizon_init": "gradient horizon of the network at init on task inputs (first lag where "
        "||dL/dh_{T-k}|| / ||dL/dh_T|| < 1e-6, as in summary.csv); empty if never within T",
        "growth_rate_init": "slope of mean ln||dL/dh_{T-k}|| against k at init, natural log per "
        "step (same measurement as summary.csv)",
        "horizon_final": "gradient horizon of the trained network; empty if never within T",
        "growth_rate_final": "slope of mean ln||dL/dh_{T-k}|| against k after training, natural "
        "log per step",
        "status": "ok, diverged (non-finite weights or loss at the end) or error (see the log)",
        "weight_scale": _CELL_DOCS["weight_scale"],
        "optimizer": "adam or sgd",
        "lr": "learning rate",
        "steps": "training budget: number of updates",
        "batch": "fresh training sequences per update",
        "device": "cpu or cuda",
        "wall_s": "wall time of the run in seconds (training and evaluation)",
        "error": "error message when status is error",
        "loss_scale_final": "loss scale S at the end of training (1 = none; dynamic: after its "
        "halvings and doublings)",
        "loss_scale_backoffs": "halvings of a dynamic loss scale over the run (inf/NaN gradients)",
    },
    "long_range_trace": {
        "task": "adding or copy",
        "model": _CELL_DOCS["model"],
        "init": "initialisation of W_hh",
        "hidden": _CELL_DOCS["hidden"],
        "seq_len": "task length T",
        "clip": "gradient clipping threshold; empty = no clipping",
        "seed": "random seed of the run",
        "precision": "precision of the run: float32, float64, float16, bfloat16 or "
        "autocast-<dtype> (float32 model under torch.autocast), then the loss scale if any "
        "(\", S=1024\" or \", S dynamic\")",
        "step": "updates done when this row was written (0 = at init); the row covers the "
        "updates since the previous row",
        "eval_loss": "loss on the fixed evaluation set at this step",
        "eval_loss_ratio": "eval_loss / baseline_loss",
        "train_loss": "mean training-batch loss over the window's updates",
        "log_grad_norm_mean": "mean over the window's updates of ln||g||_2, the global gradient "
        "norm before clipping (natural log; finite values only)",
        "grad_norm_max": "largest ||g||_2 before clipping in the window (inf/NaN if one was)",
        "n_updates": "updates in the window",
        "n_clipped": "updates in the window that were clipped",
        "n_skipped": "updates in the window skipped for a non-finite loss or gradient",
    },
    "long_range_summary": {
        "task": "adding or copy",
        "model": _CELL_DOCS["model"],
        "init": "initialisation of W_hh",
        "seq_len": "task length T",
        "clip": "gradient clipping threshold; empty = no clipping",
        "precision": "precision of the run: float32, float64, float16, bfloat16 or "
        "autocast-<dtype> (float32 model under torch.autocast), then the loss scale if any "
        "(\", S=1024\" or \", S dynamic\")",
        "n_seeds": "runs (seeds) in the group",
        "n_solved": "runs that solved the task",
        "solved_rate": "n_solved / n_seeds",
        "baseline_loss": "loss of the best memoryless predictor",
        "final_loss_median": "median final evaluation loss over seeds",
        "final_loss_ratio_median": "median of final_loss / baseline_loss",
        "steps_to_solve_median": "median steps to solve over the seeds that solved",
        "n_skipped_total": "updates skipped (non-finite) over all seeds",
        "n_clipped_total": "updates clipped over all seeds",
        "grad_norm_max": "largest gradient norm before clipping over all seeds",
        "growth_rate_init_median": "median growth rate of ln||dL/dh_{T-k}|| per step at init",
        "growth_rate_final_median": "median growth rate of ln||dL/dh_{T-k}|| per step after "
        "training",
        "wall_s_total": "summed wall time of the runs in seconds",
    },
    "long_range_precision": {
        "task": "adding or copy",
        "model": _CELL_DOCS["model"],
        "init": "initialisation of W_hh",
        "seq_len": "task length T",
        "clip": "gradient clipping threshold; empty = no clipping",
        "precision": "the reduced-precision setting of the row (as in long_range_summary)",
        "solved_rate": "fraction of seeds that solved the task in this precision",
        "reference": "the precision compared against: float32 (float64 if float32 did not run)",
        "solved_rate_reference": "fraction of seeds that solved it in the reference precision",
        "unscaled": "the same setting without loss scaling (empty if this row has no scale)",
        "solved_rate_unscaled": "fraction of seeds that solved it without the loss scale",
        "lost_vs_reference": "the reference solves it (solved_rate >= 0.5), this precision not",
        "restored_by_scaling": "the unscaled setting lost it and this loss-scaled one solves it; "
        "empty for rows without a loss scale",
    },
    # Bench stage (bpttbench.bench): the Jacobian engine against the alternatives, roofline.
    "bench": {
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
    },
    "peak": {
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
    },
    "bench_targets": {
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
    },
    # Compare stage (bpttbench.compare): results/compare/<A>__vs__<B>/, docs/compare.md.
    "compare_agreement": {
        "table": "table of the result sets the value comes from (summary, lyapunov, claims, ...)",
        "metric": "column compared (growth_rate, lyapunov_max, horizon, spectral_norm_whh, "
        "spectral_radius_whh, status, exponent, or a claims / long-range column)",
        "key": "the row's identifying columns as k=v pairs (cell, claim, run)",
        **{k: f"{doc} (empty for tables without this key)" for k, doc in _CELL_DOCS.items()},
        "regime": "regular, nonsmooth (rnn_relu), chaotic (largest Lyapunov exponent > 0 in "
        "either set), nonfinite (inf/NaN or underflow in either set) or any; picks the tolerance",
        "value_a": "value in set A (natural log per step for rates and exponents; steps for "
        "horizon); empty for status",
        "value_b": "value in set B",
        "abs_diff": "|value_a - value_b|",
        "rel_diff": "|value_a - value_b| / max(|value_a|, |value_b|); 0 when equal",
        "tol_rel": "relative tolerance (bpttbench.compare.TOLERANCES)",
        "tol_abs": "absolute tolerance, in the metric's unit",
        "tol_stat": "statistical allowance of a Lyapunov exponent in a chaotic, nonsmooth or "
        "nonfinite cell: 3 standard errors of the difference of the two batch means; 0 if unused",
        "allowed_diff": "max(tol_abs + tol_rel * max(|value_a|, |value_b|), tol_stat)",
        "within": "abs_diff <= allowed_diff, or both undefined (NaN), or the same infinity; "
        "status: equal in both sets",
        "note": "status pair (e.g. 'nan vs ok'), or 'undefined in one set only'",
    },
    "compare_timing_ratio": {
        "table": "table the timing comes from (summary: wall_s per cell; bench tables)",
        "metric": "timing or throughput column",
        "kind": "time (lower is faster) or rate (GFLOP/s, GB/s: higher is faster)",
        "key": "the row's identifying columns as k=v pairs (median over repeated rows)",
        "value_a": "value in set A (seconds, milliseconds or the rate's unit)",
        "value_b": "value in set B",
        "ratio_b_over_a": "value_b / value_a",
        "speedup_b_vs_a": "how many times faster B is than A: A/B for times, B/A for rates",
    },
    "compare_caveats": {
        "item": "what differs between the two sets' manifests (config section, precision flag, "
        "hardware, library, code version, cells present)",
        "value_a": "its value in set A",
        "value_b": "its value in set B",
        "severity": "warning (changes what or how precisely is measured) or info (expected "
        "between machines; may change the last bits)",
        "effect": "what the difference does to the comparison",
    },
    "validation": {
        "kernel": "custom CUDA kernel (or kernel chain) checked against the float64 NumPy "
        "reference given the kernel's exact (rounded) inputs",
        "shape": "problem shape, 'x'-joined (see bpttbench.validation.kernels.KERNEL_SHAPES)",
        "dtype": "kernel dtype (float32 or float64)",
        "max_rel_err": "max |got - ref| / max(1, |ref|) for accumulated logs, max |got - ref| / "
        "max |ref| for matrices (inf if any output is non-finite)",
        "tolerance": "the kernel's tolerance in this dtype",
        "passed": "max_rel_err <= tolerance",
    },
}


# The table contract: COLUMNS names and documents the columns of every table; COLUMN_KINDS
# gives the dtype kind of each column that is not a real number. bpttbench.tablecheck checks
# every table of a result set against both when it is read (bpttbench compare). Kinds:
#   "float" (the default for a column not listed): any real number, int or float; NaN = undefined
#   "int":  integers; a CSV column with empty fields reads as float and passes when every
#           filled value is a whole number
#   "str":  text (an all-empty column passes: a CSV cannot tell its type)
#   "bool": True/False (empty fields allowed)
#   "any":  not checked
# A trailing "?" marks a column a table may lack (e.g. "float?": LSTM-only columns are absent
# from a sweep without an LSTM). A new column of kind float that every table of its kind has
# needs only its doc in COLUMNS; any other kind, a line here too.
_CELL_KINDS = {"model": "str", "init": "str", "hidden": "int", "seq_len": "int", "seed": "int"}
_LONG_RANGE_KEY_KINDS = {"task": "str", "model": "str", "init": "str", "hidden": "int",
                         "seq_len": "int", "seed": "int"}
_BENCH_DEVICE_KINDS = {"device": "str", "device_name": "str", "dtype": "str", "threads": "int"}

COLUMN_KINDS: dict[str, dict[str, str]] = {
    "gradient_flow": {**_CELL_KINDS, "lag": "int", "n_finite": "int", "log_grad_norm_c": "float?"},
    "summary": {
        **_CELL_KINDS, "horizon": "int", "status": "str", "first_nonfinite_lag": "int",
        "first_nonfinite_step": "int", "underflow_lag": "int", "jacobian_backend": "str",
        "device": "str", "started_at": "str", "finished_at": "str", "error": "str",
        # the precision study's columns (absent from sets written before it)
        "underflow_lag_first": "int?", "precision": "str?", "compute_dtype": "str?",
        "grad_dtype": "str?", "loss_scale": "float?", "loss_scale_mode": "str?",
        "loss_scale_backoffs": "int?", "chain_dtype": "str?", "growth_rate_float64": "float?",
        "rate_error_vs_float64": "float?",
        # the GPU scale work's columns (absent from older sets)
        "device_index": "int?", "memory_estimate_gib": "float?",
    },
    "lyapunov": {**_CELL_KINDS, "index": "int", "warmup_forward": "int?", "warmup_align": "int?"},
    "chain_spectrum": {**_CELL_KINDS, "lag": "int", "index": "int"},
    "claims": {
        "claim_id": "str", "description": "str", "passed": "bool", "comparison": "str",
        "kind": "str?",
        "claim": "str", "condition": "str", "n": "int", "unit": "str", "source": "str",
        "note": "str",
    },
    "claim_curves": {"claim": "str", "panel": "str", "group": "str", "kind": "str"},
    "long_range": {
        **_LONG_RANGE_KEY_KINDS, "solved": "bool", "steps_to_solve": "int", "n_updates": "int",
        "n_clipped": "int", "n_skipped": "int", "horizon_init": "int", "horizon_final": "int",
        "status": "str", "optimizer": "str", "steps": "int", "batch": "int", "device": "str",
        "error": "str", "precision": "str?", "loss_scale_final": "float?",
        "loss_scale_backoffs": "int?",
    },
    "long_range_trace": {
        **_LONG_RANGE_KEY_KINDS, "step": "int", "n_updates": "int", "n_clipped": "int",
        "n_skipped": "int", "precision": "str?",
    },
    "long_range_summary": {
        "task": "str", "model": "str", "init": "str", "seq_len": "int", "n_seeds": "int",
        "n_solved": "int", "n_skipped_total": "int", "n_clipped_total": "int",
        "precision": "str?",
    },
    "long_range_precision": {
        "task": "str", "model": "str", "init": "str", "seq_len": "int", "precision": "str",
        "reference": "str", "unscaled": "str", "lost_vs_reference": "bool",
        "restored_by_scaling": "bool",
    },
    "bench": {
        "op": "str", "model": "str", "variant": "str", "hidden": "int", "batch": "int",
        "seq_len": "int", "k": "int", "label": "str", "status": "str", "reason": "str",
        "bound": "str", "n": "int", "check_keys": "str", "check_seq_len": "int",
        "check_batch": "int", "allow_tf32": "bool", "impl": "str", **_BENCH_DEVICE_KINDS,
    },
    "peak": {
        "quantity": "str", "method": "str", "size": "int", "n": "int", "unit": "str",
        "peak": "bool", **_BENCH_DEVICE_KINDS,
    },
    "bench_targets": {
        "target": "str", "description": "str", "op": "str", "variant": "str", "metric": "str",
        "baseline": "str", "aggregate": "str", "met": "bool", "rows": "int", "note": "str",
    },
    "compare_agreement": {
        "table": "str", "metric": "str", "key": "str", **_CELL_KINDS, "regime": "str",
        "within": "bool", "note": "str",
    },
    "compare_timing_ratio": {"table": "str", "metric": "str", "kind": "str", "key": "str"},
    "compare_caveats": {c: "str" for c in ("item", "value_a", "value_b", "severity", "effect")},
    "validation": {"kernel": "str", "shape": "str", "dtype": "str", "passed": "bool"},
}
KINDS = ("float", "int", "str", "bool", "any")


def column_kind(table: str, column: str) -> str:
    """The declared dtype kind of a contract column (see COLUMN_KINDS), without the "?"."""
    return COLUMN_KINDS.get(table, {}).get(column, "float").rstrip("?")


def column_optional(table: str, column: str) -> bool:
    """True for a column a table may lack (its kind ends in "?")."""
    return COLUMN_KINDS.get(table, {}).get(column, "").endswith("?")


def _cell_values(record: Mapping[str, Any]) -> dict[str, Any]:
    spec = record["spec"]
    return {k: spec[k] for k in CELL_KEYS}


def _frame(records: Iterable[Mapping[str, Any]], part: str) -> pd.DataFrame:
    frames = []
    for rec in records:
        if part in rec:
            df = pd.DataFrame(rec[part])
            for key, value in reversed(list(_cell_values(rec).items())):
                df.insert(0, key, value)
            frames.append(df)
    columns = list(COLUMNS[part])
    if not frames:
        return pd.DataFrame(columns=columns)
    out = pd.concat(frames, ignore_index=True)
    return out[[c for c in columns if c in out.columns]]


def read_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Cell records from files that each hold one record or a list of them (a block)."""
    records: list[dict[str, Any]] = []
    # An unreadable file is moved aside and named in the error: no table from partial input.
    for data in read_intermediates(paths, check=is_record):
        records.extend(data if isinstance(data, list) else [data])
    return records


def collect_cells(paths: Iterable[str | Path]) -> dict[str, pd.DataFrame]:
    """Read finished cell records and return the contract tables, sorted by cell and lag/index."""
    return tables_from_records(read_records(paths))


def tables_from_records(records: list[dict[str, Any]]) -> dict[str, pd.DataFrame]:
    """The contract tables of cell records, sorted by cell and lag/index."""
    summary_rows = []
    for rec in records:
        row = {**_cell_values(rec), **rec["summary"]}
        row.update(
            jacobian_backend=rec.get("jacobian_backend"),
            device=rec.get("device"),
            wall_s=rec.get("wall_s"),
            started_at=rec.get("started_at"),
            finished_at=rec.get("finished_at"),
            error=rec.get("error") or rec.get("chain_error"),
            device_index=rec.get("device_index"),
            memory_estimate_gib=rec.get("memory_estimate_gib"),
        )
        summary_rows.append(row)
    summary = pd.DataFrame(summary_rows, columns=list(COLUMNS["summary"]))
    for col in ("horizon", "first_nonfinite_lag", "first_nonfinite_step", "underflow_lag",
                "underflow_lag_first", "device_index"):
        summary[col] = summary[col].astype("Int64")  # nullable: empty means "never"
    tables = {
        "gradient_flow": _frame(records, "gradient_flow"),
        "summary": summary,
        "lyapunov": _frame(records, "lyapunov"),
        "chain_spectrum": _frame(records, "chain_spectrum"),
    }
    order = {"gradient_flow": ["lag"], "lyapunov": ["index"], "chain_spectrum": ["lag", "index"]}
    for name, df in tables.items():
        if len(df):
            tables[name] = df.sort_values(CELL_KEYS + order.get(name, [])).reset_index(drop=True)
    return tables


def write_table(df: pd.DataFrame, path: str | Path, name: str | None = None,
                csv_twin: bool | None = None) -> Path:
    """Write ``df`` atomically as Parquet (or CSV when ``path`` ends in .csv).

    Parquet files carry the column docs of ``COLUMNS[name]`` in their field metadata;
    a CSV twin is written next to a Parquet file of at most CSV_TWIN_MAX_ROWS rows.
    """
    path = Path(path)
    docs = COLUMNS.get(name or path.stem.split(".")[0], {})
    if path.suffix == ".csv":
        return write_with(path, lambda tmp: df.to_csv(tmp, index=False))
    table = pa.Table.from_pandas(df, preserve_index=False)
    fields = [
        f.with_metadata({"description": docs[f.name]}) if f.name in docs else f
        for f in table.schema
    ]
    table = table.cast(pa.schema(fields, metadata=table.schema.metadata))
    write_with(path, lambda tmp: pq.write_table(table, tmp))
    if csv_twin if csv_twin is not None else len(df) <= CSV_TWIN_MAX_ROWS:
        write_with(path.with_suffix(".csv"), lambda tmp: df.to_csv(tmp, index=False))
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table; in CSVs only empty fields are missing (status "nan" stays a string)."""
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False, na_values=[""])
    return pd.read_parquet(path)


def columns_markdown(names: Iterable[str] | None = None) -> str:
    """The column docs as Markdown, one section per table."""
    lines = ["# Columns of the bpttbench tables", "", "All logarithms are natural logs.", ""]
    for name in names or COLUMNS:
        lines += [f"## {name}", "", "| column | meaning |", "| --- | --- |"]
        lines += [f"| `{col}` | {doc} |" for col, doc in COLUMNS[name].items()]
        lines.append("")
    return "\n".join(lines)


def write_columns_doc(path: str | Path, names: Iterable[str] | None = None) -> Path:
    return write_text(path, columns_markdown(names))
