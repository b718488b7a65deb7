"""``bpttbench bench ...``: the subcommands of the bench stage.

- ``list``: the factory table (ops x variants) and what can run here;
- ``peak``: measure the GEMM rate and copy bandwidth (``peak.csv``);
- ``op OP``: check and time every variant of one op over the size grid (one pipeline job);
- ``collect``: join op tables and peaks into ``bench.parquet``/``bench.csv`` and evaluate
  ``benchmarks/targets.yaml`` into ``bench_targets.csv``;
- ``figures``: ``bench_speedup.png`` and ``bench_roofline.png``;
- ``run``: all of the above in one process (``benchmarks/run.py`` calls this).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bpttbench import cli_options
from bpttbench.cli_options import add_config, add_hw_tag, add_out, add_stage
from bpttbench.contract import FILE

DEFAULT_TARGETS = "benchmarks/targets.yaml"
OVERRIDES = ("ops", "variants", "hidden", "batch", "seq_len", "repeats", "warmup")


def _add_config_args(p: argparse.ArgumentParser, overrides: bool = True) -> None:
    add_config(p)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override config device")
    if overrides:
        p.add_argument("--ops", nargs="+", help="override bench.ops")
        p.add_argument("--variants", nargs="+", help="override bench.variants")
        p.add_argument("--hidden", nargs="+", type=int, help="override bench.hidden")
        p.add_argument("--batch", nargs="+", type=int, help="override bench.batch")
        p.add_argument("--seq-len", dest="seq_len", nargs="+", type=int,
                       help="override bench.seq_len")
        p.add_argument("--repeats", type=int, help="override bench.repeats")
        p.add_argument("--warmup", type=int, help="override bench.warmup")


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """The validated config with the command-line overrides applied."""
    bench = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k, None) is not None}
    top = {"device": args.device} if getattr(args, "device", None) else {}
    return cli_options.load_config(args, {"bench": bench, **top})


def _check_tag(args: argparse.Namespace, cfg: dict[str, Any]) -> None:
    cli_options.check_hw_tag(args, cfg["device"])


def _log(msg: str) -> None:
    print(msg, flush=True)


def cmd_list(args: argparse.Namespace) -> int:
    from bpttbench.bench.ops import OPS
    from bpttbench.bench.variants import FACTORY, VARIANTS, availability
    from bpttbench.hardware import resolve_device

    device = resolve_device(args.device or "auto")
    print(f"ops x variants registered in bpttbench.bench.variants.FACTORY (device {device}):")
    print(f"{'op':16s}" + "".join(f"{v:>12s}" for v in VARIANTS))
    for op in OPS:
        print(f"{op:16s}" + "".join(f"{'x' if (op, v) in FACTORY else '-':>12s}" for v in VARIANTS))
    print()
    for name, info in VARIANTS.items():
        ok, why = availability(name, device)
        print(f"{name:11s} {info.description}" + ("" if ok else f"  [not here: {why}]"))
    print()
    for name, spec in OPS.items():
        print(f"{name:16s} ({spec.model}) {spec.description}")
    return 0


def cmd_peak(args: argparse.Namespace) -> int:
    from bpttbench.bench.runner import peaks_for
    from bpttbench.tables import write_table

    cfg = load_config(args)
    _check_tag(args, cfg)
    peaks = peaks_for(cfg)
    write_table(peaks, args.out, "peak")
    for r in peaks.itertuples():
        scale, unit = (1e9, "GFLOP/s") if r.quantity == "gemm_flops" else (1e9, "GB/s")
        _log(f"{r.device:5s} {r.method:14s} size {r.size}: {r.value / scale:,.1f} {unit}"
             + ("  (peak)" if r.peak else ""))
    return 0


def cmd_op(args: argparse.Namespace) -> int:
    from bpttbench.bench.runner import bench_ops, run_op
    from bpttbench.bench.variants import check_names
    from bpttbench.tables import write_table

    cfg = load_config(args)
    bench_ops(cfg["bench"])
    _check_tag(args, cfg)
    import pandas as pd

    check_names(args.ops, [])
    df = pd.concat([run_op(cfg, op, log=_log) for op in args.ops], ignore_index=True)
    write_table(df, args.out, "bench_part", csv_twin=False)
    counts = df["status"].value_counts().to_dict()
    _log(f"bench {' '.join(args.ops)}: {len(df)} rows, status {counts}")
    return 0


def _collect(parts: list[str | Path], peak_path: str | Path, targets_path: str | Path,
             out_dir: str | Path) -> None:
    import pandas as pd

    from bpttbench.bench.runner import collect, evaluate_targets, load_targets
    from bpttbench.io import read_intermediates
    from bpttbench.tables import read_table, write_table

    targets = load_targets(targets_path)
    peaks = read_table(peak_path)
    # An unreadable part is moved aside and named in the error: no table from partial input.
    df = collect(read_intermediates(parts, pd.read_parquet), peaks)
    out = Path(out_dir)
    write_table(df, out / FILE["bench"], "bench", csv_twin=True)
    tdf = evaluate_targets(df, targets)
    write_table(tdf, out / FILE["bench_targets"], "bench_targets")
    counts = df["status"].value_counts().to_dict()
    _log(f"collected {len(df)} bench rows into {out} (status {counts}); targets: "
         + ", ".join(f"{r.target}={'n/a' if pd.isna(r.met) else ('met' if r.met else 'NOT met')}"
                     for r in tdf.itertuples()))


def cmd_collect(args: argparse.Namespace) -> int:
    _collect(args.parts, args.peak, args.targets, args.out)
    return 0


def _figures(tables: Path, out_dir: Path) -> None:
    from bpttbench.bench.plots import bench_roofline, bench_speedup
    from bpttbench.figures import save
    from bpttbench.tables import read_table

    bench = read_table(tables / FILE["bench"])
    peaks = read_table(tables / FILE["peak"])
    save(bench_speedup(bench), out_dir / "bench_speedup.png")
    save(bench_roofline(bench, peaks), out_dir / "bench_roofline.png")
    _log(f"wrote {out_dir / 'bench_speedup.png'} and {out_dir / 'bench_roofline.png'}")


def cmd_figures(args: argparse.Namespace) -> int:
    _figures(Path(args.tables), Path(args.out))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import tempfile

    from bpttbench.bench.runner import bench_ops, peaks_for, run_op
    from bpttbench.hardware import check_result_set_tag, hardware_tag, resolve_device
    from bpttbench.tables import write_table

    cfg = load_config(args)
    ops = bench_ops(cfg["bench"])
    tag = args.hw_tag or hardware_tag(cfg)
    explicit = args.hw_tag_is_explicit or cfg["hardware_tag"] != "auto"
    check_result_set_tag(tag, resolve_device(cfg["device"]), explicit)
    out = Path(args.out or f"results/{tag}")
    tables, figures = out / "tables", out / "figures"
    targets = Path(args.targets)
    if not targets.exists():
        raise FileNotFoundError(f"targets file {targets} not found; pass --targets PATH")
    peaks = peaks_for(cfg)
    write_table(peaks, tables / FILE["peak"], "peak")
    with tempfile.TemporaryDirectory(prefix="bpttbench-bench-") as tmp:
        parts = []
        for op in ops:
            df = run_op(cfg, op, log=_log)
            parts.append(write_table(df, Path(tmp) / f"{op}.parquet", "bench_part", csv_twin=False))
        _collect(parts, tables / FILE["peak"], targets, tables)
    _figures(tables, figures)
    return 0


def register(subparsers: Any) -> None:
    """Add ``bpttbench bench ...`` to the top-level CLI."""
    sub = add_stage(subparsers, "bench", "performance benchmarks of the Jacobian engine",
                    __doc__.splitlines()[0])

    s = sub.add_parser("list", help="the registered ops x variants and what can run here")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"])
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("peak", help="measure GEMM rate and copy bandwidth into peak.csv")
    _add_config_args(s, overrides=False)
    add_hw_tag(s)
    add_out(s, "peak.csv")
    s.set_defaults(func=cmd_peak)

    s = sub.add_parser("op", help="check and time every variant of some ops (a Parquet part)")
    s.add_argument("ops", nargs="+", metavar="OP", help="op name(s), see 'bpttbench bench list'")
    _add_config_args(s)
    add_hw_tag(s)
    add_out(s, "the op's Parquet part")
    s.set_defaults(func=cmd_op)

    s = sub.add_parser("collect", help="op parts + peaks -> bench.parquet/csv, bench_targets.csv")
    s.add_argument("--peak", required=True)
    s.add_argument("--targets", default=DEFAULT_TARGETS)
    add_out(s, "the tables folder", kind="folder")
    s.add_argument("parts", nargs="+")
    s.set_defaults(func=cmd_collect)

    s = sub.add_parser("figures", help="bench_speedup.png and bench_roofline.png")
    s.add_argument("--tables", required=True)
    add_out(s, "the figures folder", kind="folder")
    s.set_defaults(func=cmd_figures)

    s = sub.add_parser("run", help="peak, every op, collect and figures in one go")
    _add_config_args(s)
    add_hw_tag(s)
    add_out(s, "result folder (default results/<hardware tag>)", required=False,
            kind="folder")
    s.add_argument("--targets", default=DEFAULT_TARGETS)
    s.set_defaults(func=cmd_run)


def main(argv: list[str] | None = None) -> int:
    """Run ``bpttbench bench <argv>`` (used by benchmarks/run.py)."""
    from bpttbench.cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])
