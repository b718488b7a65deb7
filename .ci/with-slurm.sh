#!/usr/bin/env bash
# Run a command (the test suite) with a local single-node SLURM up, so that
# tests/test_slurm.py runs against a real SLURM; stop what was started afterwards.
# Needs root (apt-get, daemons); without it, or with BPTTBENCH_NO_SLURM=1, the command
# runs as it is and the SLURM test skips with its reason.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
started=0
if [ "${BPTTBENCH_NO_SLURM:-0}" != 1 ] && [ "$(id -u)" = 0 ]; then
  if bash "$here/slurm-up.sh"; then started=1; else echo "with-slurm: no local SLURM; its test will skip"; fi
else
  echo "with-slurm: not starting SLURM (not root, or BPTTBENCH_NO_SLURM=1); its test will skip"
fi
"$@"
rc=$?
[ "$started" = 1 ] && bash "$here/slurm-down.sh"
exit $rc
