"""``bpttbench compare sets A B [--out DIR] [--fail-outside]``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli_options import add_out
from .pairs import OUTPUT_FILES, default_out


def _cmd_sets(args: argparse.Namespace) -> int:
    from .comparison import compare_sets
    from .render import verdict, write_comparison

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
    stage = subparsers.add_parser(
        "compare", help="compare result sets: agreement within tolerance, timing ratios, "
        "caveats", description="Compare result sets (docs/compare.md).")
    verbs = stage.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = verbs.add_parser(
        "sets", help="compare result set B against result set A",
        description="Compare result set B against result set A. Reads both, writes only to "
        "--out (default results/compare/<A>__vs__<B>).")
    p.add_argument("set_a", help="result-set folder A (results/<hw_tag>)")
    p.add_argument("set_b", help="result-set folder B")
    add_out(p, "output folder (default: results/compare/<A>__vs__<B>)", required=False,
            kind="folder")
    p.add_argument("--fail-outside", action="store_true",
                   help="exit with status 1 when a value is outside tolerance (for CI)")
    p.set_defaults(func=_cmd_sets)
