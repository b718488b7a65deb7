#!/usr/bin/env bash
# Check a GPU machine in one command: everything bpttbench needs to know about it, offline.
#
#   scripts/gpu-check.sh OUTDIR                   on an H100/H200 (or any CUDA machine)
#   scripts/gpu-check.sh --cpu-rehearsal OUTDIR   the same steps on the CPU, tiny config
#
# Options: --budget-s N (all steps together; default 480, rehearsal 900), --wheels DIR (wheel folder for
# what is missing; default .whl, built by scripts/build-wheels.sh), --python PY,
# --steps a,b (run only these; the others are skipped with that reason).
#
# Steps, in order, each under its own timeout; a failing step never stops the next:
#   env        probe the Python packages; install what is missing from the wheel folder
#              (pip --no-index, into a throw-away --target folder on PYTHONPATH)
#   facts      nvidia-smi, driver, CUDA, torch/CuPy versions, tools (logs: facts.txt)
#   pytest     pytest -m cuda with a JUnit XML (OUTDIR/pytest-cuda.xml)
#   validate   bpttbench validation kernels (OUTDIR/validation.csv)
#   memcheck   compute-sanitizer --tool memcheck over the kernel validation
#   racecheck  compute-sanitizer --tool racecheck over the kernel validation
#   cell       one full-size cell (LSTM, H=256, B=128, T=10^4): wall time, peak GPU memory
#   launches   kernel launches, host reads and syncs per time step of a cell of each model,
#              measured (profiler: CUPTI on a GPU) beside the cost model's (OUTDIR/launches.csv)
#   resultset  the quick result set through Snakemake (config/gpu-quick.yaml) and its report
#              (OUTDIR/resultset-<tag>.tar.gz, OUTDIR/report.html)
# A global budget gives each step min(its cap, what is left after the floors of the steps
# still to come); a step whose share falls below its floor is skipped with that reason.
# OUTDIR gets at most 8 files of at most 16 MiB: summary.md (rewritten after every step, so
# it tells how far a killed run got), logs.tar.gz and the files named above.
# No editable install is needed: the package runs from src/ (PYTHONPATH).
set -u
set -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MODE=gpu
BUDGET_S=""
WHEELS=${BPTTBENCH_WHEELS:-$REPO/.whl}
PY=${PYTHON:-python3}
ONLY=""
OUT=""
usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }
needs_value() { [ $# -ge 2 ] || { echo "gpu-check: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --budget-s | --wheels | --python | --steps) needs_value "$@" ;;
    esac
    case "$1" in
        --cpu-rehearsal) MODE=rehearsal ;;
        --budget-s) BUDGET_S=$2; shift ;;
        --wheels) WHEELS=$2; shift ;;
        --python) PY=$2; shift ;;
        --steps) ONLY=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
        *) [ -z "$OUT" ] || { echo "gpu-check: one OUTDIR only" >&2; exit 2; }; OUT=$1 ;;
    esac
    shift
done
[ -n "$OUT" ] || { usage >&2; exit 2; }
# The rehearsal's budget is looser: on a shared 2-core CI machine its time says nothing.
[ -n "$BUDGET_S" ] || { [ "$MODE" = gpu ] && BUDGET_S=480 || BUDGET_S=900; }
case "$BUDGET_S" in '' | *[!0-9]*) echo "gpu-check: --budget-s needs whole seconds" >&2; exit 2 ;; esac

# What each mode runs. The GPU cell is gpu-quick.yaml's LSTM at H=256, T=10^4, scale 1.
if [ "$MODE" = gpu ]; then
    CONFIG=$REPO/config/gpu-quick.yaml
    CELL_ID=lstm-orthogonal-h256-T10000-s1-seed0
else
    CONFIG=$REPO/config/gpu-quick-rehearsal.yaml
    CELL_ID=lstm-orthogonal-h16-T60-s1-seed0
fi
# nproc alone would obey OMP_NUM_THREADS; Snakemake gets every core of the machine.
NCORES=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || echo 2)

# Steps: name, cap (s), floor (s). Caps sum to more than the budget on purpose: a step that
# finishes early leaves its time to the ones after it. The result set (sized for ~4 min) keeps
# a floor of 3 min whatever the steps before it take.
ORDER=(env facts pytest validate memcheck racecheck cell launches resultset)
declare -A CAP=([env]=90 [facts]=45 [pytest]=100 [validate]=60 [memcheck]=60 [racecheck]=60
    [cell]=120 [launches]=90 [resultset]=300)
declare -A FLOOR=([env]=10 [facts]=10 [pytest]=30 [validate]=20 [memcheck]=20 [racecheck]=20
    [cell]=30 [launches]=20 [resultset]=180)
[ "$MODE" = gpu ] || CAP[resultset]=600
PACK_RESERVE=15 # seconds kept for packing logs and the result set at the end
declare -A STATUS SECS NOTE
for s in "${ORDER[@]}"; do STATUS[$s]=pending; SECS[$s]=""; NOTE[$s]=""; done
OUT_NAMES="summary.md logs.tar.gz pytest-cuda.xml validation.csv launches.csv report.html"
MAX_FILE_BYTES=$((16 * 1024 * 1024))

mkdir -p "$OUT" || { echo "gpu-check: cannot create $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
for f in "$OUT"/* "$OUT"/.[!.]*; do # only our own files may be there (a previous run's)
    [ -e "$f" ] || continue
    b=$(basename "$f")
    case " $OUT_NAMES " in *" $b "*) continue ;; esac
    case "$b" in resultset-*.tar.gz | .summary.md.tmp | .logs.tmp) continue ;; esac
    echo "gpu-check: $OUT holds $b; give an empty or new OUTDIR (at most 8 files go there)" >&2
    exit 2
done
rm -f "$OUT"/resultset-*.tar.gz "$OUT"/pytest-cuda.xml "$OUT"/validation.csv "$OUT"/launches.csv \
    "$OUT"/report.html

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bpttbench-gpucheck.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS" "$WORK/bin"
T0=$(date +%s)
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
CURRENT=""
CUDA_OK=0
CUDA_REASON="not probed (the facts step did not run)"
SANITIZER=""
KEY_FACTS=""
FILES_NOTE=""
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg

now() { date +%s; }
left() { echo $((T0 + BUDGET_S - $(now))); }
log() { echo "[gpu-check $(($(now) - T0))s] $*" | tee -a "$LOGS/gpu-check.log" >&2; }
oneline() { tr '\n|' ' /' | sed 's/  */ /g; s/^ //; s/ $//' | cut -c1-600; }

# summary.md: written whole (temp + rename) after every change, so it is never half-written.
write_summary() {
    local tmp=$OUT/.summary.md.tmp s n_pass=0 n_fail=0 n_skip=0
    for s in "${ORDER[@]}"; do
        case "${STATUS[$s]}" in passed) n_pass=$((n_pass + 1)) ;; failed) n_fail=$((n_fail + 1)) ;;
            skipped) n_skip=$((n_skip + 1)) ;; esac
    done
    {
        echo "# bpttbench GPU check ($MODE)"
        echo
        echo "- started $STARTED on $(uname -n), budget ${BUDGET_S} s, elapsed $(($(now) - T0)) s"
        echo "- repo $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
        echo "- config $(basename "$CONFIG"), cell $CELL_ID"
        echo "- steps: $n_pass passed, $n_fail failed, $n_skip skipped" \
            "of ${#ORDER[@]}${CURRENT:+ (running: $CURRENT)}"
        if [ -n "$KEY_FACTS" ]; then
            echo
            echo "## Machine"
            echo
            sed 's/^/- /' <<<"$KEY_FACTS"
        fi
        echo
        echo "## Steps"
        echo
        echo "| step | status | seconds | what happened |"
        echo "| --- | --- | --- | --- |"
        for s in "${ORDER[@]}"; do
            echo "| $s | ${STATUS[$s]} | ${SECS[$s]} | ${NOTE[$s]} |"
        done
        echo
        echo "A step still 'running' or 'pending' here means the check was killed before it ended."
        if [ -n "$FILES_NOTE" ]; then
            echo
            echo "## Files"
            echo
            echo "$FILES_NOTE"
        fi
    } >"$tmp" && mv -f "$tmp" "$OUT/summary.md"
}

# logs.tar.gz: every step log (refreshed after each step, so a late kill keeps them).
pack_logs() {
    tar -czf "$OUT/.logs.tmp" -C "$WORK" logs 2>/dev/null && mv -f "$OUT/.logs.tmp" "$OUT/logs.tar.gz"
    rm -f "$OUT/.logs.tmp"
}

finish_files() {
    local f size lines="" n=0 over=""
    for f in "$OUT"/*; do
        [ -f "$f" ] || continue
        size=$(stat -c %s "$f")
        n=$((n + 1))
        lines+="- $(basename "$f"): $size bytes"$'\n'
        [ "$size" -le "$MAX_FILE_BYTES" ] || over+=" $(basename "$f")"
    done
    FILES_NOTE="${lines}${n} files${over:+; OVER 16 MiB:$over}"
}

on_signal() {
    trap - TERM INT
    # timeout passes the signal on to the whole process group of the step's command.
    [ -z "$CHILD" ] || { kill -TERM "$CHILD" 2>/dev/null; wait "$CHILD" 2>/dev/null; }
    if [ -n "$CURRENT" ]; then
        STATUS[$CURRENT]=failed
        NOTE[$CURRENT]="interrupted by SIG$1 after $(($(now) - STEP_T0)) s"
    fi
    for s in "${ORDER[@]}"; do
        [ "${STATUS[$s]}" = pending ] && { STATUS[$s]=skipped; NOTE[$s]="check interrupted by SIG$1"; }
    done
    CURRENT=""
    pack_logs
    finish_files
    write_summary
    rm -rf "$WORK"
    exit 130
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT

# run a command under the step's timeout; its output goes to the step log.
STEP_TIMEOUT=0
# In the background + wait, so that a TERM to this script is handled at once (on_signal).
CHILD=""
run_timed() {
    local rc
    timeout -k 10 "$STEP_TIMEOUT" "$@" >>"$STEP_LOG" 2>&1 &
    CHILD=$!
    wait "$CHILD"
    rc=$?
    CHILD=""
    return "$rc"
}
timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }

CUDA_STEPS=" validate memcheck racecheck "
FACTS_DONE=0
will_run() { # will_run STEP: may it still need its floor of the budget?
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$1,"* ]]; then return 1; fi
    if [[ "$CUDA_STEPS" == *" $1 "* ]]; then
        [ "$MODE" = gpu ] || return 1
        [ "$FACTS_DONE" = 0 ] || [ "$CUDA_OK" = 1 ] || return 1
    fi
    return 0
}

run_step() { # run_step NAME: budget, run step_NAME, record status and note
    local name=$1 later=0 s seen=0 share rc
    for s in "${ORDER[@]}"; do
        if [ "$seen" = 1 ] && [ "${STATUS[$s]}" = pending ] && will_run "$s"; then
            later=$((later + FLOOR[$s]))
        fi
        [ "$s" = "$name" ] && seen=1
    done
    if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
        STATUS[$name]=skipped; NOTE[$name]="not asked for (--steps $ONLY)"
        write_summary; return
    fi
    # env and facts come first whatever is kept for later: every other step depends on them.
    [[ " env facts " != *" $name "* ]] || later=0
    share=$(($(left) - later - PACK_RESERVE))
    [ "$share" -le "${CAP[$name]}" ] || share=${CAP[$name]}
    if [ "$share" -lt "${FLOOR[$name]}" ]; then
        STATUS[$name]=skipped
        NOTE[$name]="global budget: $(left) s left, ${later} s kept for later steps; this step needs >= ${FLOOR[$name]} s"
        log "$name: skipped (${NOTE[$name]})"
        write_summary; return
    fi
    CURRENT=$name STEP_T0=$(now) STEP_TIMEOUT=$share STEP_LOG=$LOGS/$name.log
    STATUS[$name]=running; NOTE[$name]="started at +$((STEP_T0 - T0)) s with a ${share} s timeout"
    write_summary
    log "$name: start (timeout ${share} s)"
    RESULT=failed REASON=""
    "step_$name"
    rc=$?
    [ "$rc" = 0 ] || [ -n "$REASON" ] || REASON="exit status $rc"
    STATUS[$name]=$RESULT SECS[$name]=$(($(now) - STEP_T0)) NOTE[$name]=$(oneline <<<"$REASON")
    CURRENT=""
    log "$name: ${STATUS[$name]} in ${SECS[$name]} s: ${NOTE[$name]}"
    pack_logs
    write_summary
}
# A step sets RESULT (passed / failed / skipped) and REASON (one line: why, or what it found).
verdict() { # verdict RC TEXT: passed on 0, failed otherwise (timeouts named)
    if [ "$1" = 0 ]; then RESULT=passed; REASON=$2
    elif timed_out "$1"; then RESULT=failed; REASON="timed out after ${STEP_TIMEOUT} s; $2"
    else RESULT=failed; REASON=$2; fi
}
need_cuda() { # CUDA-only steps: skip with the reason when there is no usable GPU
    if [ "$CUDA_OK" != 1 ]; then
        RESULT=skipped
        REASON="CUDA-only step; no usable CUDA device: $CUDA_REASON"
        return 1
    fi
}

step_env() {
    local missing rc d have="" lack=""
    run_timed "$PY" -m bpttbench.gpucheck probe --missing-out "$WORK/missing.txt"
    rc=$?
    [ "$rc" = 0 ] || { verdict "$rc" "probe failed with $PY (see env.log)"; return; }
    missing=$(tr '\n' ' ' <"$WORK/missing.txt" | sed 's/ $//')
    if [ -z "$missing" ]; then verdict 0 "every package present ($PY: $("$PY" -V 2>&1))"; return; fi
    for d in $missing; do # wheel names: lower case, '-' as '_'
        if compgen -G "$WHEELS/$(tr 'A-Z-' 'a-z_' <<<"$d")-*.whl" >/dev/null; then have+=" $d"
        else lack+=" $d"; fi
    done
    log "missing:$have$lack; in $WHEELS:${have:- none}"
    if [ -z "$have" ]; then
        verdict 1 "missing:$lack; not in the wheel folder $WHEELS (build it with scripts/build-wheels.sh and carry it)"
        return
    fi
    # pip resolves against what $PY already has (--dry-run --report: nothing is installed, and
    # an externally managed Python allows it), then only the wheels it picked go into a
    # private --target folder on PYTHONPATH: nothing outside $WORK changes, and nothing the
    # machine has is shadowed unless it is too old for what needs it.
    run_timed "$PY" -m pip install -q --disable-pip-version-check --dry-run --no-index \
        --find-links "$WHEELS" --report "$WORK/pip-report.json" $have &&
        "$PY" -m bpttbench.gpucheck pip-report "$WORK/pip-report.json" >"$WORK/wheels.txt" &&
        run_timed xargs -a "$WORK/wheels.txt" "$PY" -m pip install -q --disable-pip-version-check \
            --no-index --no-deps --no-compile --target "$WORK/site"
    rc=$?
    if [ "$rc" = 0 ]; then
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
        if run_timed "$PY" -c "import snakemake, jsonschema"; then
            rc=0
            [ -z "$lack" ] || rc=1
            verdict "$rc" "installed from $(basename "$WHEELS") with pip --no-index:$have ($(wc -l <"$WORK/wheels.txt") wheels)${lack:+; still missing:$lack}"
            return
        fi
    fi
    verdict 1 "pip --no-index could not install:$have (see env.log)${lack:+; not in the wheel folder:$lack}"
}

# The pipeline's rules call `bpttbench`: a shim for the chosen interpreter and src/.
make_shim() {
    printf '#!/bin/sh\nexec "%s" -m bpttbench.cli "$@"\n' "$PY" >"$WORK/bin/bpttbench"
    chmod +x "$WORK/bin/bpttbench"
    export PATH="$WORK/bin:$(dirname "$(command -v "$PY")"):$PATH"
}

step_facts() {
    local rc
    run_timed "$PY" -m bpttbench.gpucheck facts --out "$LOGS/facts.txt" --key-out "$WORK/key.txt"
    rc=$?
    FACTS_DONE=1
    [ -s "$WORK/key.txt" ] && KEY_FACTS=$(cat "$WORK/key.txt")
    for s in compute-sanitizer /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
        command -v "$s" >/dev/null 2>&1 && { SANITIZER=$(command -v "$s"); break; }
    done
    if [ "$rc" = 0 ]; then
        CUDA_OK=1
        verdict 0 "$(grep -m1 '^gpu:' "$WORK/key.txt" | cut -c6-)"
    elif [ "$rc" = 3 ]; then
        CUDA_REASON=$(grep -m1 '^no CUDA:' "$STEP_LOG" | cut -c10- | oneline)
        if [ "$MODE" = gpu ]; then verdict 1 "no usable CUDA device: $CUDA_REASON"
        else verdict 0 "CPU rehearsal; no CUDA: $CUDA_REASON"; fi
    else
        CUDA_REASON="the facts step failed (see facts.log)"
        verdict "$rc" "could not read the device facts (see facts.log)"
    fi
}

step_pytest() {
    local rc xml=$OUT/pytest-cuda.xml need=--need-run
    [ "$MODE" = gpu ] || need=""
    run_timed "$PY" -m pytest -m cuda -q -p no:cacheprovider -c "$REPO/pyproject.toml" \
        --rootdir "$REPO" --junitxml="$xml" -o junit_family=xunit2 "$REPO/tests"
    rc=$?
    if [ ! -s "$xml" ]; then verdict "$rc" "pytest wrote no JUnit XML (exit $rc; see pytest.log)"; return; fi
    local counts
    counts=$("$PY" -m bpttbench.gpucheck junit "$xml" $need 2>&1)
    local jrc=$?
    if [ "$rc" = 0 ] || [ "$rc" = 5 ]; then rc=$jrc; fi
    verdict "$rc" "$counts"
}

step_validate() {
    need_cuda || return
    local rc
    run_timed bpttbench validation kernels --out "$OUT/validation.csv"
    rc=$?
    judge_output "$rc" validation "$OUT/validation.csv" validation.csv
}

# judge_output RC KIND FILE WHAT: the step's verdict from `gpucheck KIND FILE` when the step
# wrote FILE, else from its exit status and the last line of its log.
judge_output() {
    local rc=$1 line jrc last
    if [ -s "$3" ]; then
        line=$("$PY" -m bpttbench.gpucheck "$2" "$3" 2>&1); jrc=$?
        [ "$rc" != 0 ] || rc=$jrc
        verdict "$rc" "$line"
    else
        last=$(tail -n 1 "$STEP_LOG" | oneline)
        verdict "$rc" "no $4 (exit $rc${last:+; $last})"
    fi
}

# The kernel validation under compute-sanitizer. CuPy's memory pool is switched off, so each
# array is its own allocation and memcheck sees its exact bounds.
SANITIZED_VALIDATION='import sys, cupy
cupy.cuda.set_allocator(None)
from bpttbench.cli import main
sys.exit(main(sys.argv[1:]))'
sanitize() { # sanitize TOOL SUMMARY_REGEX
    need_cuda || return
    if [ -z "$SANITIZER" ]; then
        RESULT=skipped; REASON="compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"; return
    fi
    local rc line
    # Lazy module loading: only the kernels used are loaded (and instrumented), not all of torch's.
    CUDA_MODULE_LOADING=LAZY run_timed "$SANITIZER" --tool "$1" --error-exitcode 3 --print-limit 20 --target-processes all \
        "$PY" -c "$SANITIZED_VALIDATION" validation kernels --out "$WORK/validation-$1.csv"
    rc=$?
    line=$(grep -E "$2" "$STEP_LOG" | tail -n 1 | sed 's/^=* *//')
    [ -n "$line" ] || line="no sanitizer summary in the log"
    if [ "$rc" = 3 ]; then verdict 1 "errors found: $line (see $1.log)"
    else verdict "$rc" "$line"; fi
}
step_memcheck() { sanitize memcheck 'ERROR SUMMARY'; }
step_racecheck() { sanitize racecheck 'RACECHECK SUMMARY|ERROR SUMMARY'; }

step_cell() {
    local rc
    run_timed bpttbench gradient-flow cell "$CELL_ID" --config "$CONFIG" --out "$LOGS/cell.json" --peak-memory
    rc=$?
    judge_output "$rc" cell "$LOGS/cell.json" "cell record"
}

# Launches per step: gpu.yaml's H = 64 cells (B = 32) of every model on the GPU; two tiny
# cells on the CPU (the rehearsal checks the step, its numbers are the CPU's).
step_launches() {
    local rc args=(--device cuda)
    [ "$MODE" = gpu ] || args=(--device cpu --models rnn_tanh lstm --hidden 8 --batch 2)
    run_timed bpttbench gradient-flow launches "${args[@]}" --out "$OUT/launches.csv"
    rc=$?
    judge_output "$rc" launches "$OUT/launches.csv" launches.csv
}

# Pack the result set (never its per-cell intermediates, cells/). A table too large for the
# 16 MiB a file may have is left out, the largest first, until the tarball fits; the summary
# names what was left out (the per-cell lines of logs/ and summary.csv stay).
pack_resultset() { # pack_resultset TAG
    local tag=$1 tarball=$OUT/resultset-$1.tar.gz dropped="" big p size
    local excl=(--exclude="results/$tag/cells")
    # Parquet and PNG do not compress: whatever is over the limit alone goes at once.
    while read -r size p; do
        [ "$size" -gt "$MAX_FILE_BYTES" ] || continue
        excl+=(--exclude="results/$tag/tables/$p") dropped+=" $p"
    done < <(find "$WORK/smk/results/$tag/tables" -type f -printf '%s %P\n' 2>/dev/null)
    while :; do
        tar -czf "$tarball" -C "$WORK/smk" "${excl[@]}" "results/$tag" logs 2>>"$STEP_LOG"
        [ "$(stat -c %s "$tarball")" -gt "$MAX_FILE_BYTES" ] || break
        big=$(find "$WORK/smk/results/$tag/tables" -type f -printf '%s %P\n' 2>/dev/null | sort -rn |
            while read -r _ p; do [[ " $dropped " == *" $p "* ]] || { echo "$p"; break; }; done)
        [ -n "$big" ] || { rm -f "$tarball"; echo "result set over 16 MiB even without its tables"; return; }
        excl+=(--exclude="results/$tag/tables/$big") dropped+=" $big"
    done
    echo "resultset-$tag.tar.gz${dropped:+ (left out, over 16 MiB:$dropped)}"
}

step_resultset() {
    local rc tag line src packed report
    mkdir -p "$WORK/smk"
    # Snakemake gets the step's time less PACK_S for summarising and packing after it.
    local PACK_S=30 keep=$STEP_TIMEOUT
    STEP_TIMEOUT=$((STEP_TIMEOUT - PACK_S))
    run_timed "$PY" -m snakemake -s "$REPO/Snakefile" --directory "$WORK/smk" --configfile "$CONFIG" \
        --cores "$NCORES" --keep-going --rerun-incomplete --printshellcmds
    rc=$?
    if timed_out "$rc"; then
        REASON="Snakemake stopped at its ${STEP_TIMEOUT} s share of the budget; " rc=1
    fi
    STEP_TIMEOUT=$keep
    tag=$(cd "$WORK/smk/results" 2>/dev/null && ls -d -- */ 2>/dev/null | head -n 1 | tr -d /)
    if [ -z "$tag" ]; then verdict "$rc" "${REASON}no result set written (see resultset.log)"; return; fi
    line=$("$PY" -m bpttbench.gpucheck resultset "$WORK/smk/results/$tag" 2>&1)
    src=$?
    packed=$(pack_resultset "$tag")
    report=$WORK/smk/results/$tag/report.html
    if [ -f "$report" ] && [ "$(stat -c %s "$report")" -le "$MAX_FILE_BYTES" ]; then
        cp "$report" "$OUT/report.html"
    fi
    [ "$rc" != 0 ] || rc=$src
    verdict "$rc" "${REASON}$line; $packed; $(($(now) - STEP_T0)) s in all"
}

log "mode $MODE, budget ${BUDGET_S} s, out $OUT, work $WORK"
write_summary
for step in "${ORDER[@]}"; do
    run_step "$step"
    [ "$step" != env ] || make_shim
done
pack_logs
finish_files
write_summary
log "done in $(($(now) - T0)) s: $(grep -m1 '^- steps:' "$OUT/summary.md")"
rm -rf "$WORK"
for s in "${ORDER[@]}"; do [ "${STATUS[$s]}" != failed ] || exit 1; done
exit 0
