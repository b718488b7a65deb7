#!/usr/bin/env bash
# Build the wheel folder that scripts/gpu-check.sh installs from on an offline GPU machine.
#
#   scripts/build-wheels.sh [DEST]        default DEST: .whl (ignored by git; carry it along)
#
# What a GPU machine with torch, CuPy and the scientific stack usually lacks: snakemake (the
# version tested here) and jsonschema, with their whole dependency closure, as wheels for
# CPython 3.11 and 3.12 on manylinux x86_64 (glibc >= 2.28, as the torch wheels need).
# snakemake's dependency connection_pool is published only as an sdist, so its wheel is
# built here first (pure Python: one wheel serves both versions). pulp (16 MiB) is kept:
# snakemake's default scheduler uses it, and the folder stays under MAX_MIB (default 40).
# On the GPU machine: pip install --no-index --find-links DEST snakemake jsonschema
# (gpu-check.sh does that itself, into a throw-away venv that sees the system packages).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$REPO/.whl}
PY=${PYTHON:-python3}
SNAKEMAKE=${SNAKEMAKE_SPEC:-snakemake==9.27.1}
JSONSCHEMA=${JSONSCHEMA_SPEC:-jsonschema>=4.18}
PY_VERSIONS=${PY_VERSIONS:-3.11 3.12}
MAX_MIB=${MAX_MIB:-40}
# pip matches manylinux tags exactly (only manylinux2014 expands to 2010 and 1): list each.
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64
    manylinux_2_17_x86_64 manylinux2014_x86_64)

mkdir -p "$DEST"
say() { echo "build-wheels: $*" >&2; }

# 1. connection_pool: sdist only on PyPI; build its (pure Python) wheel.
say "building the connection_pool wheel from its sdist"
"$PY" -m pip wheel -q --no-deps --no-binary connection_pool -w "$DEST" connection_pool

# 2. The closure for each Python version, binary wheels only; --find-links so that the
#    resolver takes the connection_pool wheel built above.
plat_args=()
for p in "${PLATFORMS[@]}"; do plat_args+=(--platform "$p"); done
for v in $PY_VERSIONS; do
    say "downloading $SNAKEMAKE $JSONSCHEMA and their dependencies for CPython $v"
    "$PY" -m pip download -q --only-binary=:all: --python-version "$v" --implementation cp \
        "${plat_args[@]}" --find-links "$DEST" -d "$DEST" "$SNAKEMAKE" "$JSONSCHEMA"
done

# 3. One version of each project per Python version (pip refuses a folder with two only
#    when it must choose; a stale wheel from an older run would be carried for nothing).
"$PY" - "$DEST" <<'EOF'
import collections, re, sys
from pathlib import Path

dest = Path(sys.argv[1])
seen = collections.defaultdict(list)
for whl in sorted(dest.glob("*.whl")):
    name, version, *rest = whl.name[:-4].split("-")
    seen[(re.sub(r"[-_.]+", "_", name).lower(), rest[-3])].append(version)
dups = {k: v for k, v in seen.items() if len(set(v)) > 1}
if dups:
    sys.exit(f"build-wheels: several versions in {dest}: {dups}; empty the folder and rerun")
EOF

# 4. Size, and a list of what is there (the folder travels with the working tree).
total=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
n=$(ls "$DEST"/*.whl | wc -l)
(cd "$DEST" && sha256sum -- *.whl >SHA256SUMS)
mib=$(awk -v b="$total" 'BEGIN{printf "%.1f", b / 1048576}')
say "$n wheels, $mib MiB in $DEST"
if [ "$total" -gt $((MAX_MIB * 1048576)) ]; then
    say "over $MAX_MIB MiB: check what grew (ls -S $DEST)"
    exit 1
fi
