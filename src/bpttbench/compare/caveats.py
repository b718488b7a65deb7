"""Caveats: what makes two result sets unequal, found before any value is compared (their
manifests, and columns that break the table contract)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import contract
from ..contract.gradient_flow import CELL_KEYS
from ..tablecheck import UNKNOWN
from .policy import LYAPUNOV_METRICS, SUMMARY_METRICS, compare_mode
from .resultset import ResultSet

WARNING, INFO = "warning", "info"
#: Config keys that do not change what is measured (where, how named, what is compared);
#: allow_large only lifts the config's upper bounds; the values themselves are compared.
CONFIG_KEYS_NOT_SCIENCE = frozenset({"hardware_tag", "compare", "device", "allow_large"})
#: Config keys checked on their own below, with a specific explanation.
CONFIG_KEYS_PRECISION = frozenset({"dtype", "allow_tf32", "deterministic", "jacobian_backend"})


@dataclass
class Caveat:
    item: str
    value_a: str
    value_b: str
    severity: str  # warning: changes what or how precisely is measured; info: expected
    effect: str


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def _s(value: Any) -> str:
    return "" if value is None else str(value)


def caveats(a: ResultSet, b: ResultSet) -> list[Caveat]:
    """Differences between the two sets' manifests that make their numbers unequal."""
    ma, mb = a.manifest, b.manifest
    out: list[Caveat] = []

    def add(item: str, va: Any, vb: Any, severity: str, effect: str) -> None:
        out.append(Caveat(item, _s(va), _s(vb), severity, effect))

    raw_a, raw_b = ma.get("config", {}) or {}, mb.get("config", {}) or {}
    cfg_a, cfg_b = _flatten(raw_a), _flatten(raw_b)
    skip = CONFIG_KEYS_NOT_SCIENCE | CONFIG_KEYS_PRECISION
    differing = [k for k in sorted(set(cfg_a) | set(cfg_b))
                 if k.split(".")[0] not in skip and cfg_a.get(k) != cfg_b.get(k)]
    sections = sorted({k.split(".")[0] for k in differing})
    if ma.get("config_hash") != mb.get("config_hash"):
        add("config_hash", ma.get("config_hash"), mb.get("config_hash"),
            WARNING if sections else INFO,
            "different configs: " + (", ".join(sections) + " differ (see below); only cells "
                                     "present in both sets are compared" if sections else
                                     "only hardware_tag / device / compare or precision keys "
                                     "differ"))
    for section in sections:
        keys = [k for k in differing if k.split(".")[0] == section]
        if not raw_a.get(section) or not raw_b.get(section):
            where = "A" if not raw_a.get(section) else "B"
            add(f"config.{section}", "(absent)" if where == "A" else "present",
                "(absent)" if where == "B" else "present", INFO,
                f"set {where} has no {section} settings: it was made before that stage existed "
                "or without it")
            continue

        def listing(cfg: Mapping[str, Any], keys: list[str] = keys) -> str:
            more = f"; ... ({len(keys)} keys)" if len(keys) > 6 else ""
            return "; ".join(f"{k.split('.', 1)[-1]}={cfg.get(k, '(absent)')}"
                             for k in keys[:6]) + more

        add(f"config.{section}", listing(cfg_a), listing(cfg_b), WARNING,
            f"the sets were measured with different {section} settings: seeds, sizes and "
            "sweeps must match for a row to mean the same thing")
    if cfg_a.get("device") != cfg_b.get("device"):
        add("config.device", cfg_a.get("device"), cfg_b.get("device"), INFO,
            "requested devices differ (expected when comparing machines)")

    pa_, pb_ = ma.get("precision", {}) or {}, mb.get("precision", {}) or {}
    if pa_.get("dtype") != pb_.get("dtype"):
        add("precision.dtype", pa_.get("dtype"), pb_.get("dtype"), WARNING,
            "different floating-point types: regular cells differ at the float32 rounding "
            "level (within tolerance), chaotic cells only agree statistically")
    tf_a, tf_b = bool(pa_.get("allow_tf32")), bool(pb_.get("allow_tf32"))
    if tf_a or tf_b:
        add("precision.allow_tf32", tf_a, tf_b, WARNING,
            "TF32 matmuls (10-bit mantissa) were allowed in " + ("both sets" if tf_a and tf_b
                                                                else "one set")
            + ": GPU matmul results differ from float32 by ~1e-3 relative")
    det_a, det_b = pa_.get("deterministic"), pb_.get("deterministic")
    if det_a != det_b or det_a is False or det_b is False:
        add("precision.deterministic", det_a, det_b, WARNING,
            "deterministic algorithms were off in at least one set: repeated runs on one GPU "
            "may differ in the last bits")
    for key in ("cudnn_deterministic", "cudnn_benchmark", "cublas_workspace_config"):
        if pa_.get(key) != pb_.get(key):
            add(f"precision.{key}", pa_.get(key), pb_.get(key), INFO,
                "cuDNN/cuBLAS determinism settings differ")

    jb_a, jb_b = ma.get("jacobian_backend", {}) or {}, mb.get("jacobian_backend", {}) or {}
    if jb_a.get("used") != jb_b.get("used"):
        add("jacobian_backend.used", ",".join(jb_a.get("used") or []),
            ",".join(jb_b.get("used") or []), INFO,
            "different Jacobian engines (numpy float64 / torch / cupy kernels): Lyapunov "
            "exponents differ at rounding level, chaotic cells statistically")
    elif cfg_a.get("jacobian_backend") != cfg_b.get("jacobian_backend"):
        add("config.jacobian_backend", cfg_a.get("jacobian_backend"),
            cfg_b.get("jacobian_backend"), INFO, "requested backends differ, used ones agree")

    ha, hb = ma.get("hardware", {}) or {}, mb.get("hardware", {}) or {}
    for key in ("device", "gpu_name", "cpu_model", "gpu_compute_capability", "driver",
                "cuda_runtime", "cudnn"):
        if ha.get(key) != hb.get(key):
            add(f"hardware.{key}", ha.get(key), hb.get(key), INFO,
                "different hardware or driver: timings differ; numbers differ at rounding "
                "level (different kernels and reduction orders)")
    sa, sb = ma.get("software", {}) or {}, mb.get("software", {}) or {}
    for key in sorted(set(sa) | set(sb)):
        if sa.get(key) != sb.get(key):
            numeric = key in ("torch", "numpy", "scipy", "cupy", "python", "bpttbench")
            add(f"software.{key}", sa.get(key), sb.get(key), INFO,
                "library versions differ: kernels and reduction orders may change the last "
                "bits" if numeric else "library versions differ (plots and workflow only)")
    ca, cb = ma.get("git_commit"), mb.get("git_commit")
    if ca != cb:
        add("git_commit", ca, cb, WARNING,
            "different code versions: a change in the measurement code changes the numbers")
    for label, commit in (("A", ca), ("B", cb)):
        if commit and str(commit).endswith("-dirty"):
            add(f"git_commit ({label})", ca, cb, WARNING,
                f"set {label} was computed from a tree with uncommitted changes")
    return out


#: Columns the comparison cannot do without (a missing or mistyped one is an error).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "summary": (*CELL_KEYS, "status", "lyapunov_max"),
}
#: Contract columns used by the comparison although not compared themselves: what is lost
#: without them.
USED_COLUMNS: dict[tuple[str, str], str] = {
    ("summary", "underflow_lag"): "the regime of a cell is decided without it (a cell whose "
    "||delta|| underflowed to 0 may be held to the regular tolerance)",
    ("lyapunov", "exponent_std"): "Lyapunov exponents get no statistical allowance",
    ("summary", "wall_s"): "no timing ratio of the cells",
}



def compared_columns(table: str) -> set[str]:
    """The contract columns of a table whose values the comparison compares (or times)."""
    mode = compare_mode(table)
    spec = contract.TABLES.get(table)
    if spec is None or mode == "none":
        return set()
    numeric = {c.name for c in spec.columns if c.kind in ("float", "int")}
    if table == "summary":
        return set(SUMMARY_METRICS) | (set(spec.names_with_role("timing")) & numeric)
    if table == "lyapunov":
        return set(LYAPUNOV_METRICS)
    if mode == "rows":
        return {c.name for c in spec.columns if c.role == "science"
                and c.kind in ("float", "int", "bool")}
    return set(spec.names_with_role("timing", "rate")) & numeric


def contract_caveats(a: ResultSet, b: ResultSet) -> tuple[list[Caveat], list[str]]:
    """Caveats for columns that break the table contract in either set, and the headline
    items: every compared column that is not compared because of it."""
    out: list[Caveat] = []
    headline: list[str] = []
    for table in sorted(set(a.tables) & set(b.tables)):
        cols = sorted({p.column for rs in (a, b) for p in rs.problems if p.table == table})
        for col in cols:
            pa_, pb_ = a.problem(table, col), b.problem(table, col)
            va, vb = (p.detail if p else "ok" for p in (pa_, pb_))
            item = f"{table}.{col}"
            if UNKNOWN in (getattr(pa_, "what", None), getattr(pb_, "what", None)):
                va, vb = ("present" if p else "(absent)" for p in (pa_, pb_))
                out.append(Caveat(item, va, vb, INFO, "not in the table contract (a renamed "
                                  "column, or a table from another version): not compared"))
                continue
            where = "both sets" if pa_ and pb_ else ("A" if pa_ else "B")
            what = " and ".join(sorted({p.what for p in (pa_, pb_) if p}))
            if col in compared_columns(table):
                out.append(Caveat(item, va, vb, WARNING, f"{what} in {where}: not compared"))
                headline.append(f"{item} ({what} in {where})")
            elif (table, col) in USED_COLUMNS:
                out.append(Caveat(item, va, vb, WARNING,
                                  f"{what} in {where}: {USED_COLUMNS[(table, col)]}"))
            else:
                out.append(Caveat(item, va, vb, INFO,
                                  f"{what} in {where}: not used by the comparison"))
    for label, rs in (("A", a), ("B", b)):
        for f in rs.unknown_tables:
            out.append(Caveat(f, "present" if label == "A" else "", "present" if label == "B"
                              else "", INFO, f"not a table of the contract (set {label}): "
                              "not compared"))
    return out, headline

