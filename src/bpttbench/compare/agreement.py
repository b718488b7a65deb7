"""Compare two result sets: does the science agree within tolerance, how do the timings differ?

``bpttbench compare results/A results/B [--out DIR]`` reads two finished result sets
(``manifest.json`` + ``tables/``), never writes into them, and writes to
``results/compare/<A>__vs__<B>/``:

- ``caveats.csv``: what makes the two sets unequal (config, dtype, TF32, determinism,
  library versions, Jacobian backend, code version, cells present in only one set, columns
  missing or mistyped against the table contract), checked *before* any value is compared;
- ``agreement.csv``: one row per (table, metric, cell): both values, absolute and relative
  difference, the tolerance and whether the difference is within it;
- ``timing_ratio.csv``: B/A for every timing column both sets have (``summary.wall_s``
  and the bench tables);
- ``agreement.png``: value in A against value in B per metric (with y = x) and the
  timing ratios;
- ``summary.md`` and ``summary.html``: the caveats, the verdict, the rows outside
  tolerance and the timing ratios.

Every tolerance lives in :data:`TOLERANCES` (and :data:`GENERIC_TOLERANCES` for the
claims and long-range tables); ``docs/compare.md`` explains them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .io import read_json, write_text
from .tablecheck import MISSING, UNKNOWN, ColumnProblem, TableReadError, check_file
from .tables import CELL_KEYS, COLUMNS, read_table, write_table

PAIR_SEP = "__vs__"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

#: The files a comparison writes, by role (all in one folder per pair).
OUTPUT_FILES: dict[str, str] = {
    "agreement": "agreement.csv",
    "timing_ratio": "timing_ratio.csv",
    "caveats": "caveats.csv",
    "figure": "agreement.png",
    "summary_md": "summary.md",
    "summary_html": "summary.html",
}


class ResultSetError(ValueError):
    """A folder is not a result set, or two result sets cannot be compared."""


# ---------------------------------------------------------------------------------------
# Tolerances: the one place where "agree" is defined.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """Two values agree when |a - b| <= abs + rel * max(|a|, |b|) (symmetric in a and b)."""

    rel: float
    abs: float

    def allowed(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self.abs + self.rel * np.maximum(np.abs(a), np.abs(b))


#: Regimes of a gradient-flow cell, first match wins:
#:
#: - "nonfinite": in either set inf/NaN appeared (status not ok) or ||delta|| underflowed to 0
#:   (underflow_lag set). Where that happens depends on the dtype (float32 underflows at
#:   ln||delta|| ~ -103, float64 at ~ -745), so the growth-rate fit covers different lags.
#: - "chaotic": a nonlinear cell whose largest Lyapunov exponent is > CHAOS_THRESHOLD in
#:   either set: rounding differences grow like exp(lambda t), the runs agree statistically.
#: - "nonsmooth": rnn_relu. phi' jumps from 0 to 1, and at a step where fewer than k units
#:   are on, the k-frame of the chain is rank deficient and its smallest R_ii is rounding
#:   noise (ln eps of the dtype), which shifts the lowest Lyapunov exponents by ~1e-2.
#: - "regular": everything else; differences stay at rounding level.
REGULAR, CHAOTIC, NONSMOOTH, NONFINITE, ANY = (
    "regular", "chaotic", "nonsmooth", "nonfinite", "any")
REGIMES = (REGULAR, NONSMOOTH, CHAOTIC, NONFINITE)
CHAOS_THRESHOLD = 0.0
#: Cells whose Jacobian does not depend on the trajectory: never chaotic.
LINEAR_MODELS = frozenset({"rnn_linear"})
#: Cells whose Jacobian jumps with the sign of a unit's pre-activation.
NONSMOOTH_MODELS = frozenset({"rnn_relu"})

#: (table, metric, regime) -> Tolerance, for the gradient-flow tables. Sized for the
#: hardest comparison the suite expects to pass: float32 on one device against float32 on
#: another or against float64 (see docs/compare.md for the measured differences).
TOLERANCES: dict[tuple[str, str, str], Tolerance] = {
    # growth rate and Lyapunov exponents: natural log per step
    ("summary", "growth_rate", REGULAR): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "growth_rate", NONSMOOTH): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "growth_rate", CHAOTIC): Tolerance(rel=5e-2, abs=2e-2),
    ("summary", "growth_rate", NONFINITE): Tolerance(rel=5e-2, abs=2e-2),
    ("summary", "lyapunov_max", REGULAR): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "lyapunov_max", NONSMOOTH): Tolerance(rel=1e-4, abs=1e-5),
    ("summary", "lyapunov_max", CHAOTIC): Tolerance(rel=5e-2, abs=2e-2),
    ("summary", "lyapunov_max", NONFINITE): Tolerance(rel=5e-2, abs=2e-2),
    ("lyapunov", "exponent", REGULAR): Tolerance(rel=1e-4, abs=1e-5),
    ("lyapunov", "exponent", NONSMOOTH): Tolerance(rel=5e-2, abs=2e-2),
    ("lyapunov", "exponent", CHAOTIC): Tolerance(rel=5e-2, abs=2e-2),
    ("lyapunov", "exponent", NONFINITE): Tolerance(rel=5e-2, abs=2e-2),
    # horizon: steps; the first crossing of 1e-6 may move by one lag
    ("summary", "horizon", REGULAR): Tolerance(rel=0.0, abs=1.0),
    ("summary", "horizon", NONSMOOTH): Tolerance(rel=0.0, abs=1.0),
    ("summary", "horizon", CHAOTIC): Tolerance(rel=0.1, abs=2.0),
    ("summary", "horizon", NONFINITE): Tolerance(rel=0.1, abs=2.0),
    # spectral norm / radius of W_hh: functions of the weights alone (drawn in float64 on
    # the CPU, then cast), so only the dtype's rounding and the eigen-solver differ
    ("summary", "spectral_norm_whh", ANY): Tolerance(rel=1e-5, abs=0.0),
    ("summary", "spectral_radius_whh", ANY): Tolerance(rel=1e-4, abs=0.0),
}

#: Per table-name prefix, for the tables of other stages compared column by column
#: (every numeric column that is not a key or a timing). Booleans must be equal.
GENERIC_TOLERANCES: dict[str, Tolerance] = {
    # claims: measured quantities of the gradient-flow kind
    "claims": Tolerance(rel=1e-3, abs=1e-6),
    # training runs: SGD amplifies rounding, so two devices agree only statistically
    "long_range": Tolerance(rel=0.1, abs=0.05),
}
EXACT = Tolerance(rel=0.0, abs=0.0)

#: In these regimes two runs agree statistically, not to rounding: a Lyapunov exponent (a
#: mean over the batch) also agrees when |A - B| <= STAT_Z * sqrt(std_A^2/B_A + std_B^2/B_B),
#: the standard error of the difference of two batch means (exponent_std, batch size B).
STATISTICAL_REGIMES = frozenset({CHAOTIC, NONSMOOTH, NONFINITE})
STAT_Z = 3.0


def tolerance_for(table: str, metric: str, regime: str = REGULAR) -> Tolerance:
    """The tolerance of one metric of one table in one regime (raises KeyError if none)."""
    for key in ((table, metric, regime), (table, metric, ANY)):
        if key in TOLERANCES:
            return TOLERANCES[key]
    prefix = _generic_prefix(table)
    if prefix is not None:
        return GENERIC_TOLERANCES[prefix]
    raise KeyError(f"no tolerance for {table}.{metric} in regime {regime}")


def within_tolerance(a: Any, b: Any, tol: Tolerance) -> np.ndarray:
    """Elementwise agreement; two NaNs agree (both undefined), equal infinities agree."""
    return _within(a, b, tol.rel, tol.abs)


def _within(a: Any, b: Any, rel: Any, abs_: Any) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore"):
        close = ((np.abs(a - b) <= abs_ + rel * np.maximum(np.abs(a), np.abs(b)))
                 & np.isfinite(a) & np.isfinite(b))
    both_nan = np.isnan(a) & np.isnan(b)
    same_inf = np.isinf(a) & (a == b)
    return close | both_nan | same_inf


# ---------------------------------------------------------------------------------------
# Which tables are compared, and how.
# ---------------------------------------------------------------------------------------

#: The gradient-flow metrics compared per cell (summary.csv) and the Lyapunov spectrum.
SUMMARY_METRICS = ("growth_rate", "lyapunov_max", "horizon", "spectral_norm_whh",
                   "spectral_radius_whh")
LYAPUNOV_METRICS = ("exponent",)
#: Units, for the figure's axes.
UNITS = {
    "growth_rate": "natural log per step",
    "lyapunov_max": "natural log per step",
    "exponent": "natural log per step",
    "horizon": "steps",
    "spectral_norm_whh": "dimensionless",
    "spectral_radius_whh": "dimensionless",
}

#: Tables of other stages compared column by column ("where both have them"): every
#: numeric column that is neither a key nor a timing. Tables whose name starts with one of
#: these prefixes (and does not end in one of SKIPPED_SUFFIXES) are compared.
GENERIC_PREFIXES = ("claims", "long_range")
#: Per-step traces: too detailed to compare row by row (their summaries are compared).
SKIPPED_SUFFIXES = ("_trace",)
#: Tables whose timing and throughput columns give timing ratios.
TIMING_PREFIXES = ("bench",)

#: The columns that identify a row, per table (other stages' contracts). A table not listed
#: here falls back to the columns of KEY_COLUMNS it has.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "claims": ("claim_id", "condition"),
    "long_range": ("task", "model", "init", "hidden", "seq_len", "clip", "seed"),
    "long_range_summary": ("task", "model", "init", "seq_len", "clip"),
    "bench": ("op", "model", "variant", "hidden", "batch", "seq_len", "k"),
}
KEY_COLUMNS = frozenset(CELL_KEYS) | {
    "index", "lag", "claim", "claim_id", "condition", "id", "name", "task", "op", "variant",
    "backend", "kernel", "label", "clip", "optimizer", "repeat", "shape", "k",
}

_TIMING_RE = re.compile(
    r"(^|_)(wall|time|times|seconds|sec|elapsed|latency|runtime|duration)(_|$)|_(s|ms|us|ns)$"
    r"|^(started|finished)_at$"
)
_RATE_RE = re.compile(r"(^|_)(gflops|tflops|gbps|gb_s|bandwidth|throughput|per_s|"
                      r"steps_per_s|cells_per_s)(_|$)")
#: Columns holding a speed-up (a ratio of two timings of one machine): neither science nor
#: a timing to divide.
_SPEEDUP_RE = re.compile(r"(^|_)(speedup|efficiency|fraction_of_peak|pct_peak)(_|$)")


def is_timing_column(name: str) -> bool:
    """A wall/elapsed time column (``wall_s``, ``time_ms``, ``median_us`` ...).

    Timing columns are excluded from the science comparison and from the determinism
    check ("identical tables apart from timing columns"); they give timing ratios.
    """
    return bool(_TIMING_RE.search(name.lower()))


def is_rate_column(name: str) -> bool:
    """A throughput column (GFLOP/s, GB/s, steps/s): higher is faster."""
    return bool(_RATE_RE.search(name.lower()))


def is_performance_column(name: str) -> bool:
    return is_timing_column(name) or is_rate_column(name) or bool(_SPEEDUP_RE.search(name.lower()))


def _generic_prefix(table: str) -> str | None:
    if table.endswith(SKIPPED_SUFFIXES):
        return None
    return next((p for p in GENERIC_PREFIXES if table.startswith(p)), None)


# ---------------------------------------------------------------------------------------
# Result sets
# ---------------------------------------------------------------------------------------


@dataclass
class ResultSet:
    path: Path
    manifest: dict[str, Any]
    tables: dict[str, Path]  # table name (file stem) -> file; Parquet preferred over CSV
    #: Columns missing, mistyped or unknown against the table contract (bpttbench.tablecheck).
    problems: list[ColumnProblem] = field(default_factory=list)
    #: Table files that are not contract tables (never compared).
    unknown_tables: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def problem(self, table: str, column: str) -> ColumnProblem | None:
        return next((p for p in self.problems if p.table == table and p.column == column), None)

    def read(self, table: str) -> pd.DataFrame:
        """A table, less the columns that break the contract (mistyped, or not in it): the
        comparison never uses them, and its caveats say so."""
        path = self.tables[table]
        try:
            df = read_table(path)
        except (OSError, ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ResultSetError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from None
        bad = {p.column for p in self.problems if p.table == table and p.what != MISSING}
        df = df.drop(columns=[c for c in df.columns if c in bad])
        if "status" in df.columns:
            # pandas reads the status "nan" (a NaN appeared) of a CSV as a missing value
            df["status"] = df["status"].astype(object).where(df["status"].notna(), "nan")
        return df

    def require(self, table: str, columns: Sequence[str]) -> None:
        """Raise ResultSetError naming the file and column when a needed column breaks the
        contract (missing or mistyped)."""
        for c in columns:
            p = self.problem(table, c)
            if p is not None and p.what != UNKNOWN:
                raise ResultSetError(f"{self.tables[table]}: column {c} {p.detail}; the "
                                     "comparison needs it (table contract: tables/COLUMNS.md)")

    def empty_keys(self, table: str, df: pd.DataFrame, keys: Sequence[str]) -> str | None:
        """What is wrong with a table's key columns: empty fields or repeated keys."""
        for k in keys:
            n = int(df[k].isna().sum())
            if n:
                return f"{self.tables[table]}: {n} row(s) with an empty key column {k}"
        dup = int(df.duplicated(list(keys)).sum())
        if dup:
            return (f"{self.tables[table]}: {dup} row(s) repeat the key "
                    f"({', '.join(keys)}) of another row")
        return None


def load_result_set(path: str | Path) -> ResultSet:
    """Open a result set for reading; a clear ResultSetError names what is missing."""
    p = Path(path)
    what = "a result set is a folder results/<hw_tag>/ holding manifest.json and tables/"
    if not p.is_dir():
        raise ResultSetError(f"{p}: not a result set: no such folder ({what})")
    missing = [n for n, ok in (("manifest.json", (p / "manifest.json").is_file()),
                               ("tables/", (p / "tables").is_dir())) if not ok]
    if missing:
        raise ResultSetError(f"{p}: not a result set: missing {' and '.join(missing)} ({what})")
    try:
        manifest = read_json(p / "manifest.json")
    except ValueError as exc:
        raise ResultSetError(f"{p / 'manifest.json'}: not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise ResultSetError(f"{p / 'manifest.json'}: expected a JSON object")
    tables: dict[str, Path] = {}
    for f in sorted((p / "tables").iterdir()):
        if f.is_file() and not f.name.startswith(".") and f.suffix in (".parquet", ".csv"):
            if f.stem not in tables or f.suffix == ".parquet":
                tables[f.stem] = f
    if "summary" not in tables:
        raise ResultSetError(f"{p}: not a result set: missing tables/summary.csv ({what})")
    # The table contract: every table's columns and dtype kinds (Parquet: schema only).
    problems: list[ColumnProblem] = []
    for name, f in tables.items():
        try:
            problems += check_file(name, f)
        except TableReadError as exc:
            raise ResultSetError(str(exc)) from None
    unknown = sorted(f"tables/{f.name}" for n, f in tables.items() if n not in COLUMNS)
    return ResultSet(p, manifest, tables, problems, unknown)


def result_set_input_files(folder: str | Path) -> list[str]:
    """The existing files of a result set that a comparison reads (for Snakemake inputs)."""
    p = Path(folder)
    files = [p / "manifest.json"]
    tables = p / "tables"
    if tables.is_dir():
        prefixes = ("summary", "lyapunov", *GENERIC_PREFIXES, *TIMING_PREFIXES)
        files += [f for f in sorted(tables.iterdir())
                  if f.suffix in (".csv", ".parquet") and f.stem.startswith(prefixes)]
    return [str(f) for f in files]


def pair_name(a: str | Path, b: str | Path) -> str:
    return f"{Path(a).name}{PAIR_SEP}{Path(b).name}"


def compare_pairs(folders: Sequence[str], key: str = "compare") -> dict[str, tuple[str, str]]:
    """All pairs of a list of result-set folders: pair name -> (folder A, folder B).

    Raises ValueError (naming ``key``) for one folder, duplicates, or names that are not
    usable as folder names.
    """
    norm = [os.path.normpath(str(f)) for f in folders]
    if len(norm) == 1:
        raise ValueError(f"config key {key}: needs two or more result-set folders to compare "
                         f"pairwise, got only {norm[0]!r}")
    seen: dict[str, str] = {}
    for f in norm:
        name = Path(f).name
        if not NAME_PATTERN.match(name):
            raise ValueError(f"config key {key}: {f!r} does not end in a result-set name "
                             f"(allowed: letters, digits, '.', '_', '-')")
        if PAIR_SEP in name:
            raise ValueError(f"config key {key}: {f!r}: a result-set name may not contain "
                             f"{PAIR_SEP!r}")
        if name in seen:
            raise ValueError(f"config key {key}: {seen[name]!r} and {f!r} have the same name "
                             f"{name!r}; the comparison folders would collide")
        seen[name] = f
    return {pair_name(a, b): (a, b) for a, b in itertools.combinations(norm, 2)}


def pair_folders(pair: str, pairs: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    """(A, B) of a pair name: from ``pairs`` (the config's list), else results/<A>, results/<B>."""
    if pair in pairs:
        return pairs[pair]
    if PAIR_SEP not in pair:
        raise ValueError(f"{pair!r} is not a pair name <A>{PAIR_SEP}<B>")
    a, b = pair.split(PAIR_SEP, 1)
    return f"results/{a}", f"results/{b}"


def pair_input_files(pair: str, pairs: Mapping[str, tuple[str, str]], this_set: str,
                     this_set_files: Sequence[str]) -> list[str]:
    """The Snakemake inputs of one comparison.

    This machine's set (``this_set``) gives ``this_set_files``, which the pipeline builds
    when missing. Any other set must exist already; its files are given as absolute paths,
    which no rule's output pattern matches, so Snakemake tracks their times but never plans
    a job that would recompute (or overwrite) another machine's set.
    """
    files: list[str] = []
    for folder in pair_folders(pair, pairs):
        if os.path.normpath(folder) == os.path.normpath(this_set):
            files += list(this_set_files)
            continue
        if not os.path.isfile(os.path.join(folder, "manifest.json")):
            raise ResultSetError(
                f"compare: {folder} is not a result set (no manifest.json). Only this "
                f"machine's set {this_set} can be computed by the pipeline; other sets must "
                "exist already.")
        files += [os.path.abspath(f) for f in result_set_input_files(folder)]
    return files


def default_out(a: str | Path, b: str | Path) -> Path:
    """results/compare/<A>__vs__<B>, next to A's folder."""
    return Path(a).parent / "compare" / pair_name(a, b)


# ---------------------------------------------------------------------------------------
# Caveats: what makes the comparison unequal, found before comparing any value.
# ---------------------------------------------------------------------------------------

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
    from .tables import column_kind

    cols = set(COLUMNS.get(table, {}))
    if table == "summary":
        return set(SUMMARY_METRICS) | {c for c in cols if is_timing_column(c)
                                       and column_kind(table, c) in ("float", "int")}
    if table == "lyapunov":
        return set(LYAPUNOV_METRICS)
    keys = set(TABLE_KEYS.get(table, ())) | KEY_COLUMNS
    if _generic_prefix(table):
        return {c for c in cols if c not in keys and not is_performance_column(c)
                and column_kind(table, c) in ("float", "int", "bool")}
    if table.startswith(TIMING_PREFIXES):
        return {c for c in cols if c not in keys and (is_timing_column(c) or is_rate_column(c))
                and column_kind(table, c) in ("float", "int")}
    return set()


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


# ---------------------------------------------------------------------------------------
# Agreement
# ---------------------------------------------------------------------------------------

AGREEMENT_COLUMNS = [
    "table", "metric", "key", *CELL_KEYS, "regime", "value_a", "value_b", "abs_diff",
    "rel_diff", "tol_rel", "tol_abs", "tol_stat", "allowed_diff", "within", "note",
]


def _key_string(df: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    parts = [df[k].map(lambda v, k=k: f"{k}={_fmt_key(v)}") for k in keys]
    if not parts:
        return pd.Series([""] * len(df), index=df.index)
    out = parts[0]
    for p in parts[1:]:
        out = out + " " + p
    return out


def _fmt_key(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return f"{v:g}"
    return str(v)


def _cell_regimes(sa: pd.DataFrame, sb: pd.DataFrame) -> pd.DataFrame:
    """CELL_KEYS + regime, for the cells in both summaries."""
    cols = [*CELL_KEYS, "lyapunov_max", "status"]
    for s in (sa, sb):
        if "underflow_lag" not in s:
            s["underflow_lag"] = np.nan
    m = sa[[*cols, "underflow_lag"]].merge(sb[[*cols, "underflow_lag"]], on=CELL_KEYS,
                                           suffixes=("_a", "_b"))
    lmax = np.fmax(m["lyapunov_max_a"].astype(float), m["lyapunov_max_b"].astype(float))
    chaotic = (lmax > CHAOS_THRESHOLD) & ~m["model"].isin(LINEAR_MODELS)
    nonfinite = ((m["status_a"] != "ok") | (m["status_b"] != "ok")
                 | m["underflow_lag_a"].notna() | m["underflow_lag_b"].notna())
    nonsmooth = m["model"].isin(NONSMOOTH_MODELS)
    m["regime"] = np.select([nonfinite, chaotic, nonsmooth], [NONFINITE, CHAOTIC, NONSMOOTH],
                            REGULAR)
    return m[[*CELL_KEYS, "regime", "status_a", "status_b"]]


def _metric_rows(table: str, metric: str, merged: pd.DataFrame, keys: Sequence[str],
                 tolerances: Mapping[str, Tolerance] | Tolerance,
                 stat: np.ndarray | None = None, key: np.ndarray | None = None
                 ) -> pd.DataFrame:
    """Agreement rows of one metric; ``merged`` holds keys, <metric>_a, <metric>_b, regime.

    ``stat``: a statistical allowance per row (STAT_Z standard errors of the difference),
    used in STATISTICAL_REGIMES where it is larger than the fixed tolerance.
    """
    a = pd.to_numeric(merged[f"{metric}_a"], errors="coerce").astype(float).to_numpy()
    b = pd.to_numeric(merged[f"{metric}_b"], errors="coerce").astype(float).to_numpy()
    regime = merged["regime"].to_numpy() if "regime" in merged else np.full(len(a), ANY)
    if isinstance(tolerances, Tolerance):
        rel = np.full(len(a), tolerances.rel)
        abs_ = np.full(len(a), tolerances.abs)
    else:
        rel = np.array([tolerances[r].rel for r in regime], dtype=float)
        abs_ = np.array([tolerances[r].abs for r in regime], dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(a - b)
        scale = np.maximum(np.abs(a), np.abs(b))
        rel_diff = np.where(diff == 0, 0.0, diff / scale)
    allowed = abs_ + rel * scale
    within = _within(a, b, rel, abs_)
    tol_stat = np.zeros(len(a))
    if stat is not None:
        use = np.isin(regime, list(STATISTICAL_REGIMES)) & np.isfinite(stat)
        tol_stat = np.where(use, stat, 0.0)
        with np.errstate(invalid="ignore"):
            within = within | (use & (diff <= tol_stat))
        allowed = np.fmax(allowed, tol_stat)
    out = pd.DataFrame({
        "table": table, "metric": metric,
        "key": _key_string(merged, keys).to_numpy() if key is None else key,
        "regime": regime, "value_a": a, "value_b": b, "abs_diff": diff, "rel_diff": rel_diff,
        "tol_rel": rel, "tol_abs": abs_, "tol_stat": tol_stat, "allowed_diff": allowed,
        "within": within,
        "note": "",
    })
    for k in CELL_KEYS:
        out[k] = merged[k].to_numpy() if k in merged else None
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    out.loc[nan_a & nan_b, "note"] = "undefined in both"
    out.loc[nan_a ^ nan_b, "note"] = "undefined in one set only"
    return out[AGREEMENT_COLUMNS]


def _regime_tolerances(table: str, metric: str) -> dict[str, Tolerance]:
    return {r: tolerance_for(table, metric, r) for r in REGIMES}


def _summary_rows(a: ResultSet, b: ResultSet, sa: pd.DataFrame, sb: pd.DataFrame
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    for s, rs in ((sa, a), (sb, b)):
        missing = [c for c in (*CELL_KEYS, "status", "lyapunov_max") if c not in s]
        if missing:
            raise ResultSetError(f"{rs.tables['summary']}: missing columns {', '.join(missing)}")
    regimes = _cell_regimes(sa, sb)
    if regimes.empty:
        raise ResultSetError(
            f"{a.path} and {b.path} have no common cells: no (model, init, hidden, seq_len, "
            f"weight_scale, seed) of one set is in the other ({len(sa)} and {len(sb)} cells)")
    metrics = [m for m in SUMMARY_METRICS if m in sa and m in sb]
    m = sa[[*CELL_KEYS, *metrics]].merge(sb[[*CELL_KEYS, *metrics]], on=CELL_KEYS,
                                         suffixes=("_a", "_b"))
    m = m.merge(regimes, on=CELL_KEYS)
    key = _key_string(m, CELL_KEYS).to_numpy()
    rows = [_metric_rows("summary", metric, m, CELL_KEYS, _regime_tolerances("summary", metric),
                         key=key) for metric in metrics]
    # status is categorical: its row carries no numbers, only whether it is equal and the note.
    same = (m["status_a"] == m["status_b"]).to_numpy()
    status = pd.DataFrame({
        "table": "summary", "metric": "status", "key": key,
        "regime": m["regime"].to_numpy(), "value_a": np.nan, "value_b": np.nan,
        "abs_diff": np.nan, "rel_diff": np.nan, "tol_rel": 0.0, "tol_abs": 0.0, "tol_stat": 0.0,
        "allowed_diff": np.nan, "within": same,
        "note": np.where(same, m["status_a"], m["status_a"] + " vs " + m["status_b"]),
    })
    for k in CELL_KEYS:
        status[k] = m[k].to_numpy()
    rows.append(status[AGREEMENT_COLUMNS])
    return pd.concat(rows, ignore_index=True), regimes


def _lyapunov_rows(a: ResultSet, b: ResultSet, regimes: pd.DataFrame
                   ) -> tuple[pd.DataFrame, str | None]:
    """Agreement rows of the Lyapunov spectra; a reason when they cannot be compared."""
    none = pd.DataFrame(columns=AGREEMENT_COLUMNS)
    if "lyapunov" not in a.tables or "lyapunov" not in b.tables:
        return none, None  # reported as a table only in one set
    keys = [*CELL_KEYS, "index"]
    la, lb = a.read("lyapunov"), b.read("lyapunov")
    for df, rs, label in ((la, a, "A"), (lb, b, "B")):
        broken = [c for c in (*keys, "exponent") if c not in df]
        if broken:
            return none, f"column {broken[0]} missing or mistyped in {label}"
        why = rs.empty_keys("lyapunov", df, keys)
        if why:
            return none, why
    cols = [*keys, "exponent", *(["exponent_std"] if "exponent_std" in la and
                                 "exponent_std" in lb else [])]
    m = la[cols].merge(lb[cols], on=keys, suffixes=("_a", "_b"))
    m = m.merge(regimes[[*CELL_KEYS, "regime"]], on=CELL_KEYS)
    stat = None
    if "exponent_std" in cols:
        # exponent is a batch mean and exponent_std its spread over the batch
        ba, bb = _batch_size(a), _batch_size(b)
        se2 = (m["exponent_std_a"].astype(float) ** 2 / ba
               + m["exponent_std_b"].astype(float) ** 2 / bb)
        stat = STAT_Z * np.sqrt(se2.to_numpy())
    return _metric_rows("lyapunov", "exponent", m, keys,
                        _regime_tolerances("lyapunov", "exponent"), stat), None


def _rows_only_in(ta: pd.DataFrame, tb: pd.DataFrame, keys: Sequence[str]) -> tuple[int, int]:
    """Rows of A whose key is not in B, and of B not in A (numbers matched by value, so an
    integer column read back as float still matches)."""
    def norm(df: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame(index=df.index)
        for k in keys:
            col = df[k]
            numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
            out[k] = (pd.to_numeric(col, errors="coerce").astype(float).map(repr) if numeric
                      else col.astype(str))
        return out.drop_duplicates()

    m = norm(ta).merge(norm(tb), on=list(keys), how="outer", indicator=True)
    return int((m["_merge"] == "left_only").sum()), int((m["_merge"] == "right_only").sum())


def _only_text(table: str, n_a: int, n_b: int, what: str = "row(s)") -> str | None:
    parts = [f"{n} {what} only in {label}" for n, label in ((n_a, "A"), (n_b, "B")) if n]
    return f"{table}: {', '.join(parts)}" if parts else None


def _batch_size(rs: ResultSet) -> float:
    """The batch size of a set's gradient-flow cells (NaN when its manifest does not say)."""
    try:
        return float(rs.manifest["config"]["gradient_flow"]["batch"])
    except (KeyError, TypeError, ValueError):
        return math.nan


def table_keys(df: pd.DataFrame, table: str = "") -> list[str]:
    """The identifying columns of a table of another stage (TABLE_KEYS, else KEY_COLUMNS)."""
    if table in TABLE_KEYS:
        return [c for c in TABLE_KEYS[table] if c in df.columns]
    keys = [c for c in df.columns if c in KEY_COLUMNS]
    if not keys and len(df.columns) and not pd.api.types.is_numeric_dtype(df[df.columns[0]]):
        keys = [df.columns[0]]
    return keys


def _generic_rows(table: str, ta: pd.DataFrame, tb: pd.DataFrame
                  ) -> tuple[pd.DataFrame, str | None]:
    """Agreement rows of a claims / long-range table; a reason when it cannot be compared."""
    if ta.empty and tb.empty:  # e.g. long_range_precision of a sweep without precisions
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), None
    keys = [k for k in table_keys(ta, table) if k in tb.columns]
    if not keys:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), "no identifying columns in common"
    for df, label in ((ta, "A"), (tb, "B")):
        empty = [k for k in keys if df[k].isna().any() and k not in
                 ("clip", "k")]  # clip, k: empty means "none" (no clipping, no frame)
        if empty:
            return (pd.DataFrame(columns=AGREEMENT_COLUMNS),
                    f"rows of {label} with an empty key column {empty[0]}")
        if df.duplicated(keys).any():
            return (pd.DataFrame(columns=AGREEMENT_COLUMNS),
                    f"rows of {label} are not unique under the keys {', '.join(keys)}")
    metrics = [c for c in ta.columns if c in tb.columns and c not in keys
               and not is_performance_column(c)
               and (pd.api.types.is_numeric_dtype(ta[c]) or pd.api.types.is_bool_dtype(ta[c]))
               and (pd.api.types.is_numeric_dtype(tb[c]) or pd.api.types.is_bool_dtype(tb[c]))]
    if not metrics:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), "no numeric columns in common"
    try:
        m = ta[[*keys, *metrics]].merge(tb[[*keys, *metrics]], on=keys, suffixes=("_a", "_b"))
    except (ValueError, TypeError) as exc:  # key columns of incompatible types
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), f"keys cannot be matched: {exc}"
    if m.empty:
        return pd.DataFrame(columns=AGREEMENT_COLUMNS), "no rows in common"
    prefix = _generic_prefix(table)
    tol = GENERIC_TOLERANCES[prefix] if prefix else EXACT
    rows = []
    key = _key_string(m, keys).to_numpy()
    for metric in metrics:
        exact = pd.api.types.is_bool_dtype(ta[metric]) or pd.api.types.is_bool_dtype(tb[metric])
        mm = m.copy()
        if exact:
            for s in ("_a", "_b"):
                mm[metric + s] = mm[metric + s].astype(float)
        rows.append(_metric_rows(table, metric, mm, keys, EXACT if exact else tol, key=key))
    return pd.concat(rows, ignore_index=True), None


TIMING_COLUMNS_OUT = ["table", "metric", "kind", "key", "value_a", "value_b", "ratio_b_over_a",
                      "speedup_b_vs_a"]


def _timing_rows(table: str, ta: pd.DataFrame, tb: pd.DataFrame, keys: Sequence[str]
                 ) -> pd.DataFrame:
    cols = [c for c in ta.columns if c in tb.columns and c not in keys
            and (is_timing_column(c) or is_rate_column(c))
            and pd.api.types.is_numeric_dtype(ta[c]) and pd.api.types.is_numeric_dtype(tb[c])]
    keys = [k for k in keys if k in ta.columns and k in tb.columns]
    if not cols or not keys:
        return pd.DataFrame(columns=TIMING_COLUMNS_OUT)
    # Repeated measurements of one configuration: their median.
    ga = ta.groupby(keys, dropna=False)[cols].median().reset_index()
    gb = tb.groupby(keys, dropna=False)[cols].median().reset_index()
    m = ga.merge(gb, on=keys, suffixes=("_a", "_b"))
    rows = []
    key = _key_string(m, keys).to_numpy()
    for c in cols:
        va, vb = m[c + "_a"].astype(float).to_numpy(), m[c + "_b"].astype(float).to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = vb / va
        rate = is_rate_column(c)
        rows.append(pd.DataFrame({
            "table": table, "metric": c, "kind": "rate" if rate else "time", "key": key,
            "value_a": va, "value_b": vb, "ratio_b_over_a": ratio,
            "speedup_b_vs_a": ratio if rate else 1.0 / ratio,
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=TIMING_COLUMNS_OUT)


def identical_apart_from_timings(fa: Path, fb: Path, max_bytes: int = 512 * 2**20) -> bool | None:
    """True if two tables are equal once timing columns are dropped (None: too large)."""
    if _sha256(fa) == _sha256(fb):
        return True
    if fa.stat().st_size > max_bytes or fb.stat().st_size > max_bytes:
        return None
    da, db = read_table(fa), read_table(fb)
    da = da[[c for c in da.columns if not is_timing_column(c)]]
    db = db[[c for c in db.columns if not is_timing_column(c)]]
    return bool(da.shape == db.shape and list(da.columns) == list(db.columns) and da.equals(db))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Comparison:
    a: ResultSet
    b: ResultSet
    caveats: list[Caveat]
    agreement: pd.DataFrame
    timing: pd.DataFrame
    identical: dict[str, bool | None]  # common table -> identical apart from timing columns
    skipped: dict[str, str]  # table -> why it was not compared
    only_a: int  # cells only in A
    only_b: int
    #: Compared columns of the contract left out (missing or mistyped in a set): the verdict
    #: names each of them.
    not_compared: list[str] = field(default_factory=list)

    def caveats_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(c) for c in self.caveats],
                            columns=["item", "value_a", "value_b", "severity", "effect"])

    @property
    def n_outside(self) -> int:
        return int((~self.agreement["within"].astype(bool)).sum())


def compare_sets(path_a: str | Path, path_b: str | Path) -> Comparison:
    """Compare result set B against result set A (reads only)."""
    a, b = load_result_set(path_a), load_result_set(path_b)
    if a.path.resolve() == b.path.resolve():
        raise ResultSetError(f"{a.path} and {b.path} are the same folder")
    cav = caveats(a, b)
    contract, not_compared = contract_caveats(a, b)
    cav += contract

    for rs in (a, b):
        rs.require("summary", REQUIRED_COLUMNS["summary"])
    sa, sb = a.read("summary"), b.read("summary")
    for rs, s in ((a, sa), (b, sb)):
        why = rs.empty_keys("summary", s, CELL_KEYS)
        if why:
            raise ResultSetError(f"{why}; the cells of a set must be unique and named")
    only_a, only_b = _rows_only_in(sa, sb, CELL_KEYS)
    if only_a or only_b:
        cav.append(Caveat("cells", f"{len(sa)} ({only_a} only here)",
                          f"{len(sb)} ({only_b} only here)", WARNING,
                          "the sets hold different cells; only the common ones are compared"))

    summary_rows, regimes = _summary_rows(a, b, sa, sb)
    skipped: dict[str, str] = {}
    lyap_rows, why = _lyapunov_rows(a, b, regimes)
    if why:
        skipped["lyapunov"] = why
    unmatched = [_only_text("summary", only_a, only_b, "cell(s)")]
    if "lyapunov" in a.tables and "lyapunov" in b.tables and not why:
        # Rows of the cells both sets have (cells of one set only are counted above).
        cells = regimes[CELL_KEYS]
        la, lb = (rs.read("lyapunov").merge(cells, on=CELL_KEYS) for rs in (a, b))
        unmatched.append(_only_text("lyapunov", *_rows_only_in(la, lb, [*CELL_KEYS, "index"])))
    parts = [summary_rows, lyap_rows]
    common = sorted(set(a.tables) & set(b.tables))
    for t in common:
        if _generic_prefix(t):
            broken = [f"{k} {p.what} in {label}" for k in TABLE_KEYS.get(t, ())
                      for label, rs in (("A", a), ("B", b))
                      if (p := rs.problem(t, k)) is not None and p.what != UNKNOWN]
            if broken:
                skipped[t] = f"key column {broken[0]}"
                continue
            ta, tb = a.read(t), b.read(t)
            rows, why = _generic_rows(t, ta, tb)
            if why:
                skipped[t] = why
            else:
                keys = [k for k in table_keys(ta, t) if k in tb.columns]
                unmatched.append(_only_text(t, *_rows_only_in(ta, tb, keys)))
            parts.append(rows)
    for t in sorted(set(a.tables) ^ set(b.tables)):
        if t in COLUMNS:
            where = "A" if t in a.tables else "B"
            skipped[t] = f"only in {where}"
    agreement = pd.concat([p for p in parts if len(p)], ignore_index=True)

    timing = [_timing_rows("summary", sa, sb, CELL_KEYS)]
    for t in common:
        if t.startswith(TIMING_PREFIXES):
            ta, tb = a.read(t), b.read(t)
            keys = [k for k in table_keys(ta, t) if k in tb]
            timing.append(_timing_rows(t, ta, tb, keys))
            if keys:
                only = _only_text(t, *_rows_only_in(ta, tb, keys), "timed row(s)")
                if only:
                    not_compared.append(only)
    timing_df = pd.concat([t for t in timing if len(t)], ignore_index=True) if any(
        len(t) for t in timing) else pd.DataFrame(columns=TIMING_COLUMNS_OUT)

    identical: dict[str, bool | None] = {}
    for t in common:
        try:
            identical[t] = identical_apart_from_timings(a.tables[t], b.tables[t])
        except (OSError, ValueError) as exc:  # a Parquet body damaged behind a good footer
            raise ResultSetError(f"{a.tables[t]} or {b.tables[t]}: cannot be read: "
                                 f"{type(exc).__name__}: {exc}") from None
    not_compared += [f"{t} ({why})" for t, why in sorted(skipped.items())]
    not_compared += [u for u in unmatched if u]
    return Comparison(a, b, cav, agreement, timing_df, identical, skipped, only_a, only_b,
                      not_compared)


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------


OVERVIEW_COLUMNS = ["table", "metric", "regime", "rows", "within", "outside", "bitwise_equal",
                    "max_abs_diff", "max_tolerance_used", "tolerance"]


def agreement_overview(agreement: pd.DataFrame) -> pd.DataFrame:
    """Per table, metric and regime: rows, within, outside, bitwise equal, the largest
    difference and the largest share of its tolerance a value used (> 1: outside)."""
    if agreement.empty:
        return pd.DataFrame(columns=OVERVIEW_COLUMNS)
    with np.errstate(invalid="ignore", divide="ignore"):
        used = (agreement["abs_diff"].astype(float)
                / agreement["allowed_diff"].astype(float)).to_numpy()
    used = np.where(agreement["abs_diff"].astype(float).to_numpy() == 0, 0.0, used)
    g = agreement.assign(
        equal=(agreement["abs_diff"] == 0) | agreement["note"].isin(["undefined in both"])
        | ((agreement["metric"] == "status") & agreement["within"].astype(bool)),
        used=np.where(np.isfinite(used), used, np.nan),
        tolerance=[f"rel {r:g} + abs {a:g}" for r, a in zip(agreement["tol_rel"],
                                                              agreement["tol_abs"],
                                                              strict=True)],
    )
    g.loc[g["metric"] == "status", "tolerance"] = "equal"
    g.loc[(g["table"] == "lyapunov") & g["regime"].isin(STATISTICAL_REGIMES),
          "tolerance"] += f" or {STAT_Z:g} SE"
    out = g.groupby(["table", "metric", "regime", "tolerance"], sort=False).agg(
        rows=("within", "size"), within=("within", "sum"), bitwise_equal=("equal", "sum"),
        max_abs_diff=("abs_diff", "max"), max_tolerance_used=("used", "max")).reset_index()
    out["outside"] = out["rows"] - out["within"]
    return out[OVERVIEW_COLUMNS]


def timing_overview(timing: pd.DataFrame) -> pd.DataFrame:
    if timing.empty:
        return pd.DataFrame(columns=["table", "metric", "kind", "rows", "geomean_speedup_b_vs_a",
                                     "min_speedup", "max_speedup"])
    t = timing[np.isfinite(timing["speedup_b_vs_a"].astype(float))
               & (timing["speedup_b_vs_a"].astype(float) > 0)]
    return t.groupby(["table", "metric", "kind"], sort=False).agg(
        rows=("speedup_b_vs_a", "size"),
        geomean_speedup_b_vs_a=("speedup_b_vs_a", lambda s: float(np.exp(np.log(s).mean()))),
        min_speedup=("speedup_b_vs_a", "min"), max_speedup=("speedup_b_vs_a", "max"),
    ).reset_index()


def _set_line(rs: ResultSet) -> str:
    m = rs.manifest
    hw = m.get("hardware", {}) or {}
    device = hw.get("gpu_name") or hw.get("cpu_model") or "?"
    prec = m.get("precision", {}) or {}
    return (f"{rs.path} — tag {m.get('hardware_tag')}, {device}, dtype {prec.get('dtype')}, "
            f"commit {str(m.get('git_commit'))[:12]}, config {m.get('config_hash')}, "
            f"finished {m.get('finished_at')}")


def _md_table(df: pd.DataFrame, floatfmt: str = "{:.3g}") -> str:
    if df.empty:
        return "(none)\n"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float | np.floating):
                cells.append("" if math.isnan(v) else floatfmt.format(v))
            else:
                cells.append(str(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _outside(agreement: pd.DataFrame, limit: int) -> pd.DataFrame:
    out = agreement[~agreement["within"].astype(bool)]
    cols = ["table", "metric", "key", "regime", "value_a", "value_b", "rel_diff",
            "allowed_diff", "note"]
    return out[cols].head(limit)


REGIMES_TEXT = (
    "Regimes: regular (rounding differences stay at rounding level); nonsmooth (rnn_relu: "
    "its lowest Lyapunov exponents carry ln(eps) of the dtype); chaotic (largest Lyapunov "
    "exponent > 0 in either set: the runs agree only statistically, so Lyapunov exponents "
    f"also agree within {STAT_Z:g} standard errors of the difference of the batch means); "
    "nonfinite (inf/NaN or underflow to 0 appeared in either set).")


def verdict(cmp: Comparison) -> str:
    n = len(cmp.agreement)
    warnings = sum(c.severity == WARNING for c in cmp.caveats)
    if cmp.n_outside == 0:
        text = f"All {n} compared values agree within tolerance."
    else:
        text = f"{cmp.n_outside} of {n} compared values are outside tolerance."
    if cmp.not_compared:
        text += " Not compared: " + "; ".join(cmp.not_compared) + "."
    if warnings:
        text += f" {warnings} caveat(s) make the comparison unequal: read them first."
    return text


def summary_markdown(cmp: Comparison, limit: int = 30) -> str:
    cav = cmp.caveats_frame()
    identical = [t for t, v in cmp.identical.items() if v]
    different = [t for t, v in cmp.identical.items() if v is False]
    lines = [
        f"# Comparison {cmp.a.name} vs {cmp.b.name}", "",
        f"- A: {_set_line(cmp.a)}", f"- B: {_set_line(cmp.b)}", "",
        f"**{verdict(cmp)}**", "",
        "## Caveats (checked before comparing)", "",
    ]
    if cav.empty:
        lines += ["None: same config, precision settings, Jacobian backend, library versions "
                  "and code version.", ""]
    else:
        lines += [f"- **{c.severity}** `{c.item}`: {c.value_a or '—'} vs {c.value_b or '—'}. "
                  f"{c.effect}" for c in cmp.caveats] + [""]
    lines += ["## Agreement", "",
              "Two values agree when |A − B| ≤ abs + rel·max(|A|, |B|); two NaNs agree. "
              + REGIMES_TEXT + " Tolerances: `bpttbench.compare.TOLERANCES`, docs/compare.md.",
              "",
              _md_table(agreement_overview(cmp.agreement)),
              f"Tables identical apart from timing columns: {', '.join(identical) or 'none'}."
              + (f" Different: {', '.join(different)}." if different else ""), ""]
    if cmp.skipped:
        lines += ["Not compared: " + "; ".join(f"{t} ({why})" for t, why in
                                              sorted(cmp.skipped.items())) + ".", ""]
    if cmp.n_outside:
        lines += [f"### Outside tolerance (first {limit})", "",
                  _md_table(_outside(cmp.agreement, limit), "{:.6g}")]
    lines += ["## Timings", "",
              "Speed-up of B over A (A's time / B's time; > 1: B is faster), geometric mean "
              "over the rows of each timing column; per row in timing_ratio.csv.", "",
              _md_table(timing_overview(cmp.timing)), "",
              "Files: " + ", ".join(OUTPUT_FILES.values()) + "."]
    return "\n".join(lines) + "\n"


def summary_html(cmp: Comparison, figure: Path | None, limit: int = 30) -> str:
    from .report import CSS

    def table(df: pd.DataFrame) -> str:
        if df.empty:
            return "<p class=note>(none)</p>"
        fmt = {c: "{:.4g}".format for c in df.columns if pd.api.types.is_float_dtype(df[c])}
        return ("<div class=scroll>" + df.to_html(index=False, formatters=fmt, na_rep="",
                                                  border=0, classes="tbl") + "</div>")

    cav = cmp.caveats_frame()
    parts = [
        f"<h1>Comparison {html.escape(cmp.a.name)} vs {html.escape(cmp.b.name)}</h1>",
        f"<p class=sub>A: {html.escape(_set_line(cmp.a))}<br>B: "
        f"{html.escape(_set_line(cmp.b))}</p>",
        f"<p><b>{html.escape(verdict(cmp))}</b></p>",
        "<h2>Caveats (checked before comparing)</h2>",
        table(cav) if not cav.empty else "<p>None: same config, precision settings, Jacobian "
        "backend, library versions and code version.</p>",
        "<h2>Agreement</h2><p>Two values agree when |A − B| ≤ abs + rel·max(|A|, |B|); two NaNs "
        f"agree. {html.escape(REGIMES_TEXT)}</p>",
        table(agreement_overview(cmp.agreement)),
    ]
    if figure is not None and figure.exists():
        data = base64.b64encode(figure.read_bytes()).decode()
        parts.append(f'<figure><img alt="agreement" src="data:image/png;base64,{data}">'
                     "<figcaption>Value in A against value in B per metric (dashed: y = x; "
                     "red: outside tolerance) and the timing ratios.</figcaption></figure>")
    if cmp.n_outside:
        parts += [f"<h3>Outside tolerance (first {limit})</h3>",
                  table(_outside(cmp.agreement, limit))]
    parts += ["<h2>Timings</h2><p>Speed-up of B over A (&gt; 1: B is faster).</p>",
              table(timing_overview(cmp.timing))]
    return (f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>bpttbench compare "
            f"{html.escape(cmp.a.name)} vs {html.escape(cmp.b.name)}</title><style>{CSS}"
            f"</style></head><body>{''.join(parts)}</body></html>\n")


_MARKERS = {REGULAR: "o", NONSMOOTH: "D", CHAOTIC: "^", NONFINITE: "s", ANY: "o"}


def _figure_panels(agreement: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """(table, metrics) per panel: one per gradient-flow metric, one per other table."""
    panels: list[tuple[str, list[str]]] = []
    numeric = agreement[agreement["metric"] != "status"]
    for (table, metric), _ in numeric.groupby(["table", "metric"], sort=False):
        if table in ("summary", "lyapunov"):
            panels.append((table, [metric]))
        elif not any(t == table for t, _ in panels):
            panels.append((table, sorted(numeric.loc[numeric["table"] == table,
                                                     "metric"].unique())))
    return panels


def agreement_figure(agreement: pd.DataFrame, timing: pd.DataFrame, name_a: str, name_b: str):
    """Value in A against value in B per metric (y = x dashed), then the timing speed-ups."""
    import matplotlib.ticker

    from .figures import plt, sns

    panels = _figure_panels(agreement)
    speed = timing[np.isfinite(timing["speedup_b_vs_a"].astype(float))
                   & (timing["speedup_b_vs_a"].astype(float) > 0)] if len(timing) else timing
    used = agreement[(agreement["metric"] != "status")
                     & np.isfinite(agreement["abs_diff"].astype(float))
                     & (agreement["allowed_diff"].astype(float) > 0)]
    n = len(panels) + (1 if len(used) else 0) + (1 if len(speed) else 0)
    if n == 0:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.text(0.5, 0.5, "nothing numeric to compare", ha="center", va="center")
        ax.set_axis_off()
        return fig
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 4.0 * nrow), squeeze=False)
    flat = list(axes.flat)
    for ax, (table, metrics) in zip(flat, panels, strict=False):
        d = agreement[(agreement["table"] == table) & agreement["metric"].isin(metrics)]
        a, b = d["value_a"].astype(float).to_numpy(), d["value_b"].astype(float).to_numpy()
        within = d["within"].astype(bool).to_numpy()
        finite = np.isfinite(a) & np.isfinite(b)
        for regime, marker in _MARKERS.items():
            sel = finite & (d["regime"].to_numpy() == regime)
            for ok, color, label in ((True, "tab:blue", "within"), (False, "tab:red", "outside")):
                s = sel & (within == ok)
                if s.any():
                    ax.scatter(a[s], b[s], s=16 if ok else 30, c=color, marker=marker,
                               alpha=0.7, label=f"{regime}, {label}", linewidths=0.5)
        if finite.any():
            lo = float(min(a[finite].min(), b[finite].min()))
            hi = float(max(a[finite].max(), b[finite].max()))
            if lo > 0 and hi / lo > 100:
                ax.set_xscale("log")
                ax.set_yscale("log")
            pad = 0.0 if ax.get_xscale() == "log" else 0.03 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8, label="y = x")
        unit = UNITS.get(metrics[0], "value") if len(metrics) == 1 else "value"
        what = metrics[0] if len(metrics) == 1 else f"{len(metrics)} columns"
        ax.set_xlabel(f"{name_a}: {what} ({unit})")
        ax.set_ylabel(f"{name_b}: {what} ({unit})")
        title = f"{table}.{what}: {int((~within).sum())}/{len(d)} outside"
        if (~finite).sum():
            title += f"\n({int((~finite).sum())} non-finite not shown)"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
    slot = len(panels)
    if len(used):
        ax = flat[slot]
        slot += 1
        floor = 1e-4
        frac = (used["abs_diff"].astype(float) / used["allowed_diff"].astype(float)).clip(floor)
        data = used.assign(fraction=frac.to_numpy(), column=used["table"] + "." + used["metric"],
                           outcome=np.where(used["within"].astype(bool), "within", "outside"))
        sns.stripplot(data=data, x="column", y="fraction", hue="outcome",
                      palette={"within": "tab:blue", "outside": "tab:red"}, ax=ax, size=3,
                      alpha=0.6, jitter=0.25)
        ax.set_yscale("log")
        ax.axhline(1.0, color="tab:red", lw=0.8, ls="--")
        ax.set_xlabel("")
        ax.set_ylabel("|A − B| / allowed difference")
        ax.set_title(f"Share of the tolerance used (> 1: outside;\nequal values drawn at "
                     f"{floor:g})", fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if len(speed):
        ax = flat[slot]
        data = speed.assign(column=speed["table"] + "." + speed["metric"])
        sns.stripplot(data=data, x="column", y="speedup_b_vs_a", hue="kind", ax=ax, size=4,
                      alpha=0.7, jitter=0.2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("timing column")
        ax.set_ylabel(f"speed-up of {name_b} over {name_a} (×, log scale)")
        ax.set_title(f"Timings: > 1 means {name_b} is faster", fontsize=10)
        ax.tick_params(axis="x", labelrotation=20)
    for ax in flat[n:]:
        ax.set_axis_off()
    fig.suptitle(f"Agreement of {name_b} with {name_a}", y=1.0)
    fig.tight_layout()
    return fig


def write_comparison(cmp: Comparison, out: str | Path) -> dict[str, Path]:
    """Write every output file of a comparison into ``out``; returns role -> path."""
    from .figures import save

    out = Path(out)
    for rs in (cmp.a, cmp.b):
        inside = out.resolve()
        if inside == rs.path.resolve() or rs.path.resolve() in inside.parents:
            raise ResultSetError(f"--out {out} is inside the result set {rs.path}; a comparison "
                                 "never writes into a result set")
    paths = {role: out / name for role, name in OUTPUT_FILES.items()}
    write_table(cmp.caveats_frame(), paths["caveats"], "compare_caveats")
    write_table(cmp.agreement, paths["agreement"], "compare_agreement")
    write_table(cmp.timing, paths["timing_ratio"], "compare_timing_ratio")
    save(agreement_figure(cmp.agreement, cmp.timing, cmp.a.name, cmp.b.name), paths["figure"])
    write_text(paths["summary_md"], summary_markdown(cmp))
    write_text(paths["summary_html"], summary_html(cmp, paths["figure"]))
    return paths


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def _cmd_compare(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_out(args.set_a, args.set_b)
    cmp = compare_sets(args.set_a, args.set_b)
    print(f"comparing {cmp.a.path} (A) with {cmp.b.path} (B)")
    for c in cmp.caveats:
        print(f"caveat [{c.severity}] {c.item}: {c.value_a} vs {c.value_b}: {c.effect}")
    write_comparison(cmp, out)
    print(verdict(cmp))
    print(f"wrote {out}/{{{','.join(OUTPUT_FILES.values())}}}")
    if args.fail_outside and cmp.n_outside:
        return 1
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare", help="compare two result sets: agreement within tolerance, timing ratios, "
        "caveats",
        description="Compare result set B against result set A. Reads both, writes only to "
        "--out (default results/compare/<A>__vs__<B>).")
    p.add_argument("set_a", help="result-set folder A (results/<hw_tag>)")
    p.add_argument("set_b", help="result-set folder B")
    p.add_argument("--out", help="output folder (default: results/compare/<A>__vs__<B>)")
    p.add_argument("--fail-outside", action="store_true",
                   help="exit with status 1 when a value is outside tolerance (for CI)")
    p.set_defaults(func=_cmd_compare)
