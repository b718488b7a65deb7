"""The bench stage: the size grid, one op's rows (check, then time), collect, targets.

For every shape of an op and every requested variant registered for it:

1. a variant that cannot run here (no GPU, no CuPy), a shape whose memory estimate exceeds
   ``max_memory_gib``, or a shape that a smaller one of the same variant shows to be slower
   than ``max_call_s`` per call, gives a row with status ``skipped`` and the reason;
2. the variant runs on the *check* problem (the first ``check_steps`` steps and first few
   batch elements of the same inputs) and its output is compared with the float64 CPU
   reference; a disagreement gives status ``mismatch`` with the error, and no timing;
3. otherwise it is timed on the full problem (warm-up, repeats, median and IQR).

``collect`` joins the op tables with the measured peaks: ``speedup_vs_torch`` (median of
the torch variant / median of the row, same op and shape) and the roofline columns
(``fraction_of_peak`` = achieved FLOP/s / min(peak FLOP/s, intensity x peak bandwidth)).
"""

from __future__ import annotations

import gc
import itertools
import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from bpttbench.bench.ops import (
    BENCH_DTYPES,
    OpSpec,
    Shape,
    check_tolerance,
    compare,
    get_op,
    make_problem,
    reference,
    summarise,
)
from bpttbench.bench.timing import (
    benchmark,
    blas_threads,
    device_name,
    measure_peaks,
    set_threads,
)
from bpttbench.bench.variants import (
    FACTORY,
    availability,
    check_names,
    implementation,
    variant_device,
)
from bpttbench.config import as_list
from bpttbench.precision import torch_dtype

GIB = 2.0**30
STATUSES = ("ok", "mismatch", "skipped", "oom", "error")


# ------------------------------------------------------------------------------ the grid


def shapes_for(bench: Mapping[str, Any], op: str) -> list[Shape]:
    """The problem sizes of ``op``: the grid plus the extra ``shapes`` entries for it.

    ``sweep: product`` takes every (hidden, batch, seq_len) combination; ``sweep: axes``
    varies one of them at a time around ``base`` (default: the first value of each list).
    Sorted by the op's FLOPs, smallest first, so that a slow variant shows itself early.
    """
    spec = get_op(op)
    hs, bs, ts = (list(map(int, as_list(bench[key]))) for key in ("hidden", "batch", "seq_len"))
    if bench.get("sweep", "product") == "axes":
        base = bench.get("base") or {}
        h0, b0, t0 = (int(base.get(key, vals[0])) for key, vals in
                      (("hidden", hs), ("batch", bs), ("seq_len", ts)))
        combos = ([(h, b0, t0) for h in hs] + [(h0, b, t0) for b in bs]
                  + [(h0, b0, t) for t in ts])
    else:
        combos = list(itertools.product(hs, bs, ts))
    shapes = [Shape(h, b, t) for h, b, t in dict.fromkeys(combos)]
    for extra in bench.get("shapes") or []:
        if extra.get("op", op) == op:
            shapes.append(Shape(int(extra["hidden"]), int(extra["batch"]), int(extra["seq_len"]),
                                str(extra.get("label", "extra"))))
    k = int(bench["k"])
    return sorted(dict.fromkeys(shapes), key=lambda s: (spec.flops(s, k), s.label))


def bench_ops(bench: Mapping[str, Any]) -> list[str]:
    ops, variants = list(as_list(bench["ops"])), list(as_list(bench["variants"]))
    check_names(ops, variants)
    return ops


# ------------------------------------------------------------------------------ one op


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "OutOfMemory" in type(exc).__name__


def _free_memory(device: str) -> None:
    """Give GPU memory back between sizes (on a CPU, reference counting is enough)."""
    if device != "cuda":
        return
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
        try:
            import cupy as cp

            cp.get_default_memory_pool().free_all_blocks()
        except Exception:  # noqa: BLE001 - cupy absent or unusable: nothing to free
            pass


def _slow_reason(history: list[tuple[Shape, float]], spec: OpSpec, shape: Shape,
                 max_call_s: float) -> str | None:
    """A reason to skip ``shape`` when a no-larger shape already took over max_call_s per call.

    Ops that step through time (chains, BPTT) scale the smaller shape's time by the
    seq_len ratio (each step costs at least as much at the larger size).
    """
    for prev, call_s in history:
        if prev.hidden <= shape.hidden and prev.batch <= shape.batch and (
            prev.seq_len <= shape.seq_len
        ):
            factor = shape.seq_len / prev.seq_len if spec.kind in ("chain", "bptt") else 1.0
            if call_s * factor > max_call_s:
                return (f"predicted >= {call_s * factor:.3g} s per call (H={prev.hidden}, "
                        f"B={prev.batch}, T={prev.seq_len} took {call_s:.3g} s) > max_call_s "
                        f"{max_call_s:g}")
    return None


def run_op(cfg: Mapping[str, Any], op_name: str,
           log: Callable[[str], None] = print) -> pd.DataFrame:
    """Every row of one op (see the module docstring). ``cfg`` is a validated config."""
    from bpttbench.hardware import apply_precision, resolve_device

    bench = cfg["bench"]
    spec = get_op(op_name)
    variants = [v for v in as_list(bench["variants"]) if (op_name, v) in FACTORY]
    check_names([op_name], variants)
    device = resolve_device(cfg.get("device", "auto"))
    dtype_name = cfg.get("dtype", "float32")
    dtype = torch_dtype(dtype_name, BENCH_DTYPES)
    # TF32 as configured; torch's default algorithm choice (the config's ``deterministic``
    # is for the science stages: a benchmark times what a user gets by default)
    apply_precision(bool(cfg.get("allow_tf32", False)), deterministic=False)
    set_threads(int(bench.get("threads", 0)))
    threads = torch.get_num_threads()
    numpy_threads = blas_threads() or -1
    k = int(bench["k"])
    itemsize = torch.empty((), dtype=dtype).element_size()
    tol = check_tolerance(dtype_name, bool(cfg.get("allow_tf32", False)), device)
    names = {d: device_name(d) for d in {"cpu", device}}
    avail = {v: availability(v, device) for v in variants}
    history: dict[str, list[tuple[Shape, float]]] = {v: [] for v in variants}
    timing_kw = {"warmup": int(bench["warmup"]), "repeats": int(bench["repeats"]),
                 "time_budget_s": float(bench["time_budget_s"]),
                 "max_call_s": float(bench["max_call_s"])}
    max_op_s = float(bench.get("max_op_s", 0) or 0)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    shapes = shapes_for(bench, op_name)
    log(f"bench {op_name}: {len(shapes)} shapes x variants {', '.join(variants)} on {device} "
        f"({dtype_name}, {threads} threads)")

    for shape in shapes:
        flops, nbytes = spec.flops(shape, k), spec.bytes(shape, k, itemsize)
        mem = spec.memory_estimate(shape, k, itemsize)
        base = {"op": op_name, "model": spec.model, "hidden": shape.hidden,
                "batch": shape.batch, "seq_len": shape.seq_len,
                "k": spec.frame_size(shape.hidden, k), "label": shape.label,
                "dtype": dtype_name, "allow_tf32": bool(cfg.get("allow_tf32", False)),
                "threads": threads, "flops": flops, "bytes": nbytes,
                "intensity": flops / nbytes, "memory_estimate_gib": mem / GIB}

        def row(variant: str, status: str, reason: str = "", base: dict = base,
                **more: Any) -> dict[str, Any]:
            # a variant that cannot run here is recorded on the run's device
            dev = variant_device(variant, device) if avail[variant][0] else device
            r = {**base, "variant": variant, "device": dev, "device_name": names.get(dev, dev),
                 "status": status, "reason": reason, **more}
            if variant == "numpy":
                r["threads"] = numpy_threads
            rows.append(r)
            return r

        skip_all = None
        if mem > float(bench["max_memory_gib"]) * GIB:
            skip_all = (f"memory estimate {mem / GIB:.3g} GiB > max_memory_gib "
                        f"{float(bench['max_memory_gib']):g}")
        elif max_op_s and time.perf_counter() - t_start > max_op_s:
            skip_all = f"op time budget max_op_s={max_op_s:g} s spent"
        if skip_all:
            for v in variants:
                row(v, "skipped", skip_all if avail[v][0] else avail[v][1])
            continue
        try:
            problem = make_problem(spec, shape, k=k, dtype=dtype, device=device,
                                   seed=int(bench["seed"]))
            check = problem.prefix(spec.check_shape(shape, int(bench["check_steps"])))
            ref = reference(check)
        except Exception as exc:  # noqa: BLE001 - a failing shape is recorded, the stage goes on
            status = "oom" if _is_oom(exc) else "error"
            for v in variants:
                row(v, status, f"problem set-up failed: {type(exc).__name__}: {exc}")
            _free_memory(device)
            continue
        check_info = {"check_seq_len": check.seq_len, "check_batch": check.batch,
                      "check_tol": tol}
        for v in variants:
            ok, why = avail[v]
            if not ok:
                row(v, "skipped", why)
                continue
            slow = _slow_reason(history[v], spec, shape, float(bench["max_call_s"]))
            if slow:
                row(v, "skipped", slow)
                continue
            dev = variant_device(v, device)
            fn = FACTORY[(op_name, v)]
            try:
                err, keys = compare(summarise(spec, fn(check)()), ref)
                info = {**check_info, "check_err": err, "check_keys": ",".join(keys),
                        "impl": implementation(v, problem, dev)}
                if not err <= tol:
                    row(v, "mismatch", f"output differs from the float64 reference: max error "
                        f"{err:.3g} > {tol:g} on {','.join(keys)}", **info)
                    log(f"  {v:10s} H={shape.hidden} B={shape.batch} T={shape.seq_len}: "
                        f"MISMATCH err={err:.3g}")
                    continue
                timing = benchmark(fn(problem), dev, **timing_kw)
                st = timing.stats()
                del timing
                history[v].append((shape, st["median_ms"] * 1e-3))
                sec = st["median_ms"] * 1e-3
                row(v, "ok", **info, **st, achieved_gflops=flops / sec / 1e9,
                    achieved_gbps=nbytes / sec / 1e9)
                log(f"  {v:10s} H={shape.hidden} B={shape.batch} T={shape.seq_len}: "
                    f"{st['median_ms']:.4g} ms (n={st['n']}, IQR {st['iqr_ms']:.3g} ms, "
                    f"check err {err:.2g})")
            except Exception as exc:  # noqa: BLE001 - recorded as data, the stage goes on
                status = "oom" if _is_oom(exc) else "error"
                row(v, status, f"{type(exc).__name__}: {exc}")
                log(f"  {v:10s} H={shape.hidden} B={shape.batch} T={shape.seq_len}: {status}: "
                    f"{exc}")
                if status == "error":
                    log(traceback.format_exc())
                else:
                    _free_memory(device)
        del problem, check
        _free_memory(device)
    return pd.DataFrame(rows, columns=RAW_COLUMNS)


RAW_COLUMNS = [
    "op", "model", "variant", "hidden", "batch", "seq_len", "k", "label", "status", "reason",
    "n", "median_ms", "q25_ms", "q75_ms", "iqr_ms", "min_ms", "mean_ms", "flops", "bytes",
    "intensity", "achieved_gflops", "achieved_gbps", "check_err", "check_tol", "check_keys",
    "check_seq_len", "check_batch", "device", "device_name", "dtype", "allow_tf32", "threads",
    "impl", "memory_estimate_gib",
]
COLUMNS_ORDER = RAW_COLUMNS[:12] + ["speedup_vs_torch", "fraction_of_peak", "bound",
                                    "attainable_gflops", "peak_gflops", "peak_gbps"] + RAW_COLUMNS[12:]


def peaks_for(cfg: Mapping[str, Any]) -> pd.DataFrame:
    """Measured peaks on the bench device (and on the CPU when the numpy variant runs)."""
    from bpttbench.hardware import apply_precision, resolve_device

    bench = cfg["bench"]
    device = resolve_device(cfg.get("device", "auto"))
    # TF32 as configured; torch's default algorithm choice (the config's ``deterministic``
    # is for the science stages: a benchmark times what a user gets by default)
    apply_precision(bool(cfg.get("allow_tf32", False)), deterministic=False)
    set_threads(int(bench.get("threads", 0)))
    devices = [device]
    if device != "cpu" and "numpy" in as_list(bench["variants"]):
        devices.append("cpu")
    rows = []
    for dev in devices:
        rows += measure_peaks(dev, torch_dtype(cfg.get("dtype", "float32"), BENCH_DTYPES))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ collect


def _peak_values(peaks: pd.DataFrame) -> dict[str, tuple[float, float]]:
    out = {}
    for dev, grp in peaks.groupby("device"):
        gemm = grp.loc[grp["quantity"] == "gemm_flops", "value"].max()
        bw = grp.loc[grp["quantity"] == "copy_bandwidth", "value"].max()
        out[str(dev)] = (float(gemm), float(bw))
    return out


def collect(parts: Sequence[pd.DataFrame], peaks: pd.DataFrame) -> pd.DataFrame:
    """One table of every op's rows with speedup_vs_torch and the roofline columns."""
    frames = [p for p in parts if len(p)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RAW_COLUMNS)
    key = ["op", "hidden", "batch", "seq_len", "label"]
    torch_ms = (df[(df["variant"] == "torch") & (df["status"] == "ok")]
                .set_index(key)["median_ms"].rename("torch_ms"))
    df = df.join(torch_ms, on=key)
    df["speedup_vs_torch"] = df["torch_ms"] / df["median_ms"]
    peak = _peak_values(peaks)
    gemm = df["device"].map(lambda d: peak.get(d, (math.nan, math.nan))[0]).astype(float)
    bw = df["device"].map(lambda d: peak.get(d, (math.nan, math.nan))[1]).astype(float)
    roof = np.minimum(gemm, df["intensity"].astype(float) * bw)
    df["peak_gflops"] = gemm / 1e9
    df["peak_gbps"] = bw / 1e9
    df["attainable_gflops"] = roof / 1e9
    df["bound"] = np.where(df["intensity"].astype(float) * bw >= gemm, "compute", "memory")
    df["fraction_of_peak"] = df["achieved_gflops"].astype(float) / df["attainable_gflops"]
    for col in ("n", "k", "check_seq_len", "check_batch"):
        df[col] = df[col].astype("Int64")
    df = df[COLUMNS_ORDER]
    return df.sort_values(["op", "label", "hidden", "batch", "seq_len", "variant"],
                          kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------ targets

TARGET_KEYS = {"target", "description", "op", "variant", "metric", "threshold", "baseline",
               "where", "aggregate", "device"}
METRICS = ("speedup", "fraction_of_peak")
AGGREGATES = {"min": np.min, "median": np.median, "max": np.max}


def load_targets(path: str | Path) -> list[dict[str, Any]]:
    """Read and check benchmarks/targets.yaml (errors name the file, entry and key)."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    targets = data.get("targets")
    if not isinstance(targets, list) or not targets:
        raise ValueError(f"{path}: needs a non-empty list under 'targets:'")
    out = []
    for i, t in enumerate(targets):
        where = f"{path}: targets[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"{where} must be a mapping")
        extra = set(t) - TARGET_KEYS
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; allowed: "
                             f"{sorted(TARGET_KEYS)}")
        for req in ("target", "op", "variant", "metric", "threshold"):
            if req not in t:
                raise ValueError(f"{where}: missing key {req!r}")
        check_names([t["op"]], [t["variant"]] + ([t["baseline"]] if "baseline" in t else []))
        if t["metric"] not in METRICS:
            raise ValueError(f"{where}: metric {t['metric']!r}; allowed: {', '.join(METRICS)}")
        if t["metric"] == "speedup" and "baseline" not in t:
            raise ValueError(f"{where}: metric speedup needs a 'baseline' variant")
        agg = t.get("aggregate", "min")
        if agg not in AGGREGATES:
            raise ValueError(f"{where}: aggregate {agg!r}; allowed: {', '.join(AGGREGATES)}")
        for col, bounds in (t.get("where") or {}).items():
            if col not in ("hidden", "batch", "seq_len") or not set(bounds) <= {"min", "max"}:
                raise ValueError(f"{where}: 'where' takes hidden/batch/seq_len with min/max, "
                                 f"got {col}: {bounds}")
        out.append({**t, "aggregate": agg, "device": t.get("device", "cuda")})
    return out


def _where_text(t: Mapping[str, Any]) -> str:
    parts = []
    for col, b in (t.get("where") or {}).items():
        if "min" in b:
            parts.append(f"{col} >= {b['min']}")
        if "max" in b:
            parts.append(f"{col} <= {b['max']}")
    return ", ".join(parts) or "all sizes"


def evaluate_targets(df: pd.DataFrame, targets: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per target: target, measured, met, note (plus what it compares)."""
    rows = []
    for t in targets:
        rec = {"target": t["target"], "description": t.get("description", ""), "op": t["op"],
               "variant": t["variant"], "metric": t["metric"],
               "baseline": t.get("baseline", ""), "threshold": float(t["threshold"]),
               "aggregate": t["aggregate"], "measured": math.nan, "met": pd.NA, "rows": 0,
               "note": ""}
        rows.append(rec)
        mine = df[(df["op"] == t["op"]) & (df["variant"] == t["variant"])]
        on_dev = mine[mine["device"] == t["device"]]
        if on_dev.empty:
            here = ", ".join(sorted(set((mine if len(mine) else df)["device"]))) or "none"
            rec["note"] = (f"not applicable on this device ({here}); the target is for "
                           f"{t['device']}")
            continue
        sel = on_dev
        for col, b in (t.get("where") or {}).items():
            if "min" in b:
                sel = sel[sel[col] >= b["min"]]
            if "max" in b:
                sel = sel[sel[col] <= b["max"]]
        if sel.empty:
            rec["note"] = f"no {t['op']}/{t['variant']} rows with {_where_text(t)} in this run"
            continue
        ok = sel[sel["status"] == "ok"]
        if t["metric"] == "speedup":
            key = ["op", "hidden", "batch", "seq_len", "label"]
            base = df[(df["variant"] == t["baseline"]) & (df["status"] == "ok")]
            base = base.set_index(key)["median_ms"]
            vals = ok.join(base.rename("base_ms"), on=key)
            values = (vals["base_ms"] / vals["median_ms"]).dropna().to_numpy()
        else:
            values = ok["fraction_of_peak"].dropna().to_numpy(dtype=float)
        if values.size == 0:
            reasons = sorted(set(sel["reason"].dropna()) - {""})
            rec["note"] = ("no timed rows to evaluate: " + "; ".join(reasons))[:300]
            rec["rows"] = 0
            continue
        measured = float(AGGREGATES[t["aggregate"]](values))
        rec.update(measured=measured, met=bool(measured >= float(t["threshold"])),
                   rows=int(values.size),
                   note=f"{t['aggregate']} over {values.size} rows with {_where_text(t)}")
    return pd.DataFrame(rows)

