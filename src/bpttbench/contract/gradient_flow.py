"""Contract of the gradient-flow stage: the four cell tables and their figures."""

from __future__ import annotations

from .spec import Figure, make_table

STAGE = "gradient_flow"
#: The columns that name a cell of the sweep (every cell table starts with them).
CELL_KEYS = ("model", "init", "hidden", "seq_len", "weight_scale", "seed")
CELL_DOCS = {
    "model": "recurrent cell: rnn_tanh, rnn_relu, rnn_linear, lstm or gru",
    "init": "initialisation of W_hh: orthogonal, gaussian or torch_default",
    "hidden": "hidden size H",
    "seq_len": "sequence length T (steps of BPTT)",
    "weight_scale": "recurrent weight scale s (orthogonal: every singular value of W_hh is s)",
    "seed": "random seed of weights, inputs and readout",
}
CELL_KINDS = {"model": "str", "init": "str", "hidden": "int", "seq_len": "int", "seed": "int"}

GRADIENT_FLOW_DOCS = {
    **CELL_DOCS,
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
}

SUMMARY_DOCS = {
    **CELL_DOCS,
    "growth_rate": "least-squares slope of mean ln||dL/dh_{T-k}|| against k, natural log per "
    "step (negative = vanishing, positive = exploding); finite lags only",
    "growth_fit_r2": "R^2 of that linear fit (1 = exactly exponential in the lag: residuals "
    "within the round-off of compute_dtype, RMS <= sqrt(n) eps max(1, max|ln||delta|||))",
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
    "chain_forward": "forward record the Jacobian chain read: shared (the BPTT-delta chain's, "
    "rebuilt from autograd's own trajectory: one forward pass per cell) or own "
    "(jacobians.forward_saved); empty where the chain did not run",
    "device": "cpu or cuda",
    "wall_s": "wall time of the cell in seconds (BPTT + Jacobian chain)",
    "started_at": "UTC time the cell started (ISO 8601)",
    "finished_at": "UTC time the cell finished (ISO 8601)",
    "error": "error message when status is error or too_large (the reason), or when only "
    "the Jacobian chain failed",
    "device_index": "physical index of the GPU the cell ran on (empty on the CPU)",
    "memory_estimate_gib": "peak memory of the cell estimated from its shape before it ran, "
    "GiB (bpttbench.memory)",
    # issue 13: BPTT by the one-column Jacobian chain, autograd as a sampled reference
    "bptt_method": "how dL/dh_t was computed: autograd, or jacobian_chain (the loss gradient "
    "carried back through the analytic step Jacobians in the working dtype, unrescaled)",
    "grad_norm_rel_err_vs_autograd": "max over lags and batch of | ||dL/dh_t|| (chain) / "
    "||dL/dh_t|| (autograd) - 1 | (inf where one overflowed or underflowed and the other "
    "did not); empty unless both ran on the cell",
    "log_grad_norm_max_abs_err": "max over lags and batch of |ln||dL/dh_t|| (log-scale "
    "chain) - ln||dL/dh_t|| (autograd)| where autograd's is finite; empty unless both ran",
    "growth_rate_log_scale": "growth_rate of the log-scale chain (rescaled every step: no "
    "overflow or underflow), natural log per step; empty unless the chain ran",
}

LYAPUNOV_DOCS = {
    **CELL_DOCS,
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
}

CHAIN_SPECTRUM_DOCS = {
    **CELL_DOCS,
    "lag": "k: the chain P_{T,T-k} = J_T ... J_{T-k+1}",
    "index": "1 = largest singular value",
    "log_sv": "ln sigma_index(P_{T,T-k}), the true singular value of the product (from the "
    "accumulated triangular factors of a full frame), batch mean (natural log); NaN where "
    "any batch element's value is unresolved: more than 18 nats (a factor 1.5e-8) below the "
    "largest value of its block of coupled values after the QR sweeps (the float64 SVD's "
    "resolution), or its product has a non-finite entry",
    "frame_log_stretch": "log stretching of column index of the QR frame after k steps, "
    "batch mean: not a singular value (only its sum over a full frame is ln|det P|)",
}


TABLES = (
    make_table("gradient_flow", STAGE, "gradient_flow.parquet", (*CELL_KEYS, "lag"),
               GRADIENT_FLOW_DOCS,
               {**CELL_KINDS, "lag": "int", "n_finite": "int", "log_grad_norm_c": "float?"}),
    make_table(
        "summary", STAGE, "summary.csv", CELL_KEYS, SUMMARY_DOCS,
        {
            **CELL_KINDS, "horizon": "int", "status": "str", "first_nonfinite_lag": "int",
            "first_nonfinite_step": "int", "underflow_lag": "int", "jacobian_backend": "str",
            "device": "str", "started_at": "str", "finished_at": "str", "error": "str",
            # the precision study's columns (absent from sets written before it)
            "underflow_lag_first": "int?", "precision": "str?", "compute_dtype": "str?",
            "grad_dtype": "str?", "loss_scale": "float?", "loss_scale_mode": "str?",
            "loss_scale_backoffs": "int?", "chain_dtype": "str?",
            "growth_rate_float64": "float?", "rate_error_vs_float64": "float?",
            # the GPU scale work's columns (absent from older sets)
            "device_index": "int?", "memory_estimate_gib": "float?",
            "bptt_method": "str?", "grad_norm_rel_err_vs_autograd": "float?",
            "log_grad_norm_max_abs_err": "float?", "growth_rate_log_scale": "float?",
            "chain_forward": "str?",
        },
        {"wall_s": "timing", "started_at": "timing", "finished_at": "timing"},
        compare="cells"),
    make_table("lyapunov", STAGE, "lyapunov.parquet", (*CELL_KEYS, "index"), LYAPUNOV_DOCS,
               {**CELL_KINDS, "index": "int", "warmup_forward": "int?", "warmup_align": "int?"},
               compare="cells"),
    make_table("chain_spectrum", STAGE, "chain_spectrum.parquet", (*CELL_KEYS, "lag", "index"),
               CHAIN_SPECTRUM_DOCS, {**CELL_KINDS, "lag": "int", "index": "int"},
               csv_twin=False),
)

#: ``bpttbench gradient-flow launches`` (scripts/gpu-check.sh): a machine check, not a table
#: of the pipeline's result set (so an intermediate: no pipeline rule writes it)
LAUNCH_COUNT_DOCS = {
    "model": "recurrent cell: rnn_tanh, rnn_relu, rnn_linear, lstm or gru",
    "hidden": "hidden size H",
    "batch": "batch size B",
    "dtype": "dtype the cell ran in",
    "device": "cpu or cuda",
    "bptt_method": "how the cell computed delta_t: autograd or jacobian_chain",
    "chain_forward": "forward record the Lyapunov chain read: shared or own",
    "launches_per_step": "per time step of the cell (its BPTT and Lyapunov chain), measured by "
    "the torch profiler as the difference between T = 160 and T = 416: on a GPU every kernel "
    "and memset that ran (CUPTI: torch's, cuBLAS's and our CuPy kernels), on the CPU the "
    "leaf aten ops that do work",
    "model_launches_per_step": "the same by the cost model (plan.cell_step)",
    "host_reads_per_step": "per time step: device-to-host copies (GPU) or tensor-to-host "
    "calls (CPU); 0 when nothing comes back inside the step loop",
    "syncs_per_step": "per time step: explicit stream, device or event synchronisations "
    "(GPU; 0 on the CPU)",
}
LAUNCH_COUNTS = make_table(
    "launch_counts", STAGE, "launch_counts.csv", ("model", "hidden", "batch", "dtype", "device"),
    LAUNCH_COUNT_DOCS, {"model": "str", "hidden": "int", "batch": "int", "dtype": "str",
                        "device": "str", "bptt_method": "str", "chain_forward": "str"},
    intermediate=True)
TABLES = (*TABLES, LAUNCH_COUNTS)

_FLOW, _CHAINS = "Gradient flow through time", "Jacobian products and Lyapunov spectra"
FIGURES = tuple(
    Figure(name, STAGE, tables, f"bpttbench.gradient_flow.figures:{name}", category, section)
    for name, tables, category, section in (
        # summary: which cells went non-finite (status, first_nonfinite_lag) and grad_dtype
        ("gradient_norm_by_lag", ("gradient_flow", "summary"), "Gradient flow", _FLOW),
        ("growth_rate_by_scale", ("summary",), "Gradient flow", _FLOW),
        ("horizon_heatmap", ("summary",), "Gradient flow", _FLOW),
        ("lyapunov_spectrum", ("lyapunov",), "Jacobian chains", _CHAINS),
        ("chain_singular_values", ("chain_spectrum",), "Jacobian chains", _CHAINS),
    )
)
