"""Contract of the long-range stage: training runs on the adding and copy tasks."""

from __future__ import annotations

from .gradient_flow import CELL_DOCS
from .spec import Figure, make_table

STAGE = "long_range"
RUN_KEYS = ("task", "model", "init", "hidden", "seq_len", "clip", "seed")
_KEY_KINDS = {"task": "str", "model": "str", "init": "str", "hidden": "int", "seq_len": "int",
              "seed": "int"}

LONG_RANGE_DOCS = {
    "task": "adding (sum of two marked values, MSE) or copy (recall 10 symbols, cross-entropy)",
    "model": CELL_DOCS["model"],
    "init": "initialisation of W_hh (identity = W_hh = s I, the IRNN for rnn_relu)",
    "hidden": CELL_DOCS["hidden"],
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
    "solved": "final_loss < solved_fraction x baseline_loss",
    "steps_to_solve": "first evaluation step with loss < solved_fraction x baseline; empty "
    "if never (a run can cross it and end unsolved)",
    "best_loss": "lowest evaluation loss seen during training (including step 0)",
    "n_updates": "training steps attempted",
    "n_clipped": "updates whose gradient was rescaled to the clip norm",
    "n_skipped": "updates skipped because the loss or gradient was inf or NaN",
    "grad_norm_max": "largest global gradient norm before clipping over the run: NaN if one "
    "was NaN (a NaN gradient, or a non-finite loss whose gradient was not taken), else inf if "
    "one was inf",
    "horizon_init": "gradient horizon of the network at init on task inputs (first lag where "
    "||dL/dh_{T-k}|| / ||dL/dh_T|| < 1e-6, as in summary.csv); empty if never within T",
    "growth_rate_init": "slope of mean ln||dL/dh_{T-k}|| against k at init, natural log per "
    "step (same measurement as summary.csv)",
    "horizon_final": "gradient horizon of the trained network; empty if never within T",
    "growth_rate_final": "slope of mean ln||dL/dh_{T-k}|| against k after training, natural "
    "log per step",
    "status": "ok, diverged (non-finite weights or loss at the end) or error (see the log)",
    "weight_scale": CELL_DOCS["weight_scale"],
    "optimizer": "adam or sgd",
    "lr": "learning rate",
    "steps": "training budget: number of updates",
    "batch": "fresh training sequences per update",
    "solved_fraction": "the solved threshold as a fraction of baseline_loss (config "
    "long_range.solved_fraction, default 0.1); empty in tables written before it was recorded",
    "device": "cpu or cuda",
    "wall_s": "wall time of the run in seconds (training and evaluation)",
    "error": "error message when status is error",
    "loss_scale_final": "loss scale S at the end of training (1 = none; dynamic: after its "
    "halvings and doublings)",
    "loss_scale_backoffs": "halvings of a dynamic loss scale over the run (inf/NaN gradients)",
    "fused": "True: trained as the fused torch.nn module (cuDNN on CUDA) with the unrolled "
    "cell's parameters, per-step gradients measured on the unrolled cell; False: unrolled",
}

TRACE_DOCS = {
    "task": "adding or copy",
    "model": CELL_DOCS["model"],
    "init": "initialisation of W_hh",
    "hidden": CELL_DOCS["hidden"],
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
    "grad_norm_max": "largest ||g||_2 before clipping in the window: NaN if one was NaN (or "
    "a non-finite loss skipped its gradient), else inf if one was inf; NaN at step 0",
    "n_updates": "updates in the window",
    "n_clipped": "updates in the window that were clipped",
    "n_skipped": "updates in the window skipped for a non-finite loss or gradient",
    "solved_fraction": "the run's solved threshold as a fraction of baseline_loss (the "
    "'solved' line of the learning curves); empty in tables written before it was recorded",
}

SUMMARY_DOCS = {
    "task": "adding or copy",
    "model": CELL_DOCS["model"],
    "init": "initialisation of W_hh",
    "seq_len": "task length T",
    "clip": "gradient clipping threshold; empty = no clipping",
    "precision": "precision of the run: float32, float64, float16, bfloat16 or "
    "autocast-<dtype> (float32 model under torch.autocast), then the loss scale if any "
    "(\", S=1024\" or \", S dynamic\")",
    "n_seeds": "runs (seeds) in the group",
    "n_solved": "runs that solved the task",
    "solved_rate": "n_solved / n_seeds",
    "solved_fraction": "solved: final loss < solved_fraction x baseline_loss (config "
    "long_range.solved_fraction); empty in tables written before it was recorded",
    "baseline_loss": "loss of the best memoryless predictor",
    "final_loss_median": "median final evaluation loss over seeds",
    "final_loss_ratio_median": "median of final_loss / baseline_loss",
    "steps_to_solve_median": "median steps to solve over the seeds that solved (empty if "
    "none did)",
    "n_skipped_total": "updates skipped (non-finite) over all seeds",
    "n_clipped_total": "updates clipped over all seeds",
    "grad_norm_max": "largest gradient norm before clipping over the seeds' finished runs "
    "(status ok or diverged): NaN if one run's was NaN, else inf if one was inf",
    "growth_rate_init_median": "median growth rate of ln||dL/dh_{T-k}|| per step at init",
    "growth_rate_final_median": "median growth rate of ln||dL/dh_{T-k}|| per step after "
    "training",
    "wall_s_total": "summed wall time of the runs in seconds",
}

PRECISION_DOCS = {
    "task": "adding or copy",
    "model": CELL_DOCS["model"],
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
}


TABLES = (
    make_table(
        "long_range", STAGE, "long_range.parquet", RUN_KEYS, LONG_RANGE_DOCS,
        {**_KEY_KINDS, "solved": "bool", "steps_to_solve": "int", "n_updates": "int",
         "n_clipped": "int", "n_skipped": "int", "horizon_init": "int", "horizon_final": "int",
         "status": "str", "optimizer": "str", "steps": "int", "batch": "int", "device": "str",
         "error": "str", "precision": "str?", "loss_scale_final": "float?",
         "loss_scale_backoffs": "int?", "fused": "bool?", "solved_fraction": "float?"},
        {"wall_s": "timing"}, compare="rows"),
    make_table(
        "long_range_trace", STAGE, "long_range_trace.parquet", (*RUN_KEYS, "step"), TRACE_DOCS,
        {**_KEY_KINDS, "step": "int", "n_updates": "int", "n_clipped": "int",
         "n_skipped": "int", "precision": "str?", "solved_fraction": "float?"}),
    make_table(
        "long_range_summary", STAGE, "long_range_summary.csv",
        ("task", "model", "init", "seq_len", "clip"), SUMMARY_DOCS,
        {"task": "str", "model": "str", "init": "str", "seq_len": "int", "n_seeds": "int",
         "n_solved": "int", "n_skipped_total": "int", "n_clipped_total": "int",
         "precision": "str?", "solved_fraction": "float?"},
        {"wall_s_total": "timing"}, compare="rows"),
    make_table(
        "long_range_precision", STAGE, "long_range_precision.csv",
        ("task", "model", "init", "seq_len", "clip"), PRECISION_DOCS,
        {"task": "str", "model": "str", "init": "str", "seq_len": "int", "precision": "str",
         "reference": "str", "unscaled": "str", "lost_vs_reference": "bool",
         "restored_by_scaling": "bool"},
        compare="rows"),
)

_SECTION = "Long-range dependencies in training"
FIGURES = tuple(
    Figure(name, STAGE, inputs, f"bpttbench.long_range.figures:{name}", "Long-range training",
           _SECTION)
    for name, inputs in (
        ("long_range_solved", ("long_range_summary",)),
        ("long_range_curves", ("long_range_trace",)),
        ("long_range_grad_norm", ("long_range_trace",)),
        ("long_range_vs_horizon", ("long_range_summary", "long_range", "summary")),
    )
)
