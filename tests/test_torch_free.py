"""The planning layer needs no torch: ``snakemake -n`` and ``bpttbench --help`` run where
torch cannot be imported, and never try to import it.

A stand-in ``torch`` package first on PYTHONPATH records every attempt to import it (a marker
file) and then raises ImportError, so a swallowed ImportError is caught too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_TORCH = '''import os
with open(os.environ["TORCH_IMPORT_MARKER"], "a") as fh:
    import traceback
    fh.write("".join(traceback.format_stack()) + "\\n---\\n")
raise ImportError("torch is not importable here (tests/test_torch_free.py)")
'''


@pytest.fixture
def no_torch_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    fake = tmp_path / "no_torch" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_TORCH)
    marker = tmp_path / "torch_imports.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake.parent), str(REPO / "src")]),
               TORCH_IMPORT_MARKER=str(marker), BPTTBENCH_GPU_NAMES="")
    env.pop("BPTTBENCH_STANDIN_GPUS", None)
    # the stand-in really is what `import torch` finds
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0 and "not importable here" in probe.stderr
    marker.unlink()
    return env, marker


def _torch_imports(marker: Path) -> str:
    return marker.read_text() if marker.exists() else ""


def test_cli_help_imports_no_torch(no_torch_env) -> None:
    env, marker = no_torch_env
    for args in (["--help"], ["plan", "tag"], ["plan", "jobs"], ["gradient-flow", "--help"],
                 ["claims", "--help"], ["long-range", "--help"], ["bench", "--help"]):
        out = subprocess.run([sys.executable, "-m", "bpttbench.cli", *args], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (args, out.stderr[-2000:])
        assert not _torch_imports(marker), (args, _torch_imports(marker)[-3000:])
    tag = subprocess.run([sys.executable, "-m", "bpttbench.cli", "plan", "tag"], env=env,
                         cwd=REPO, capture_output=True, text=True, timeout=120).stdout.strip()
    # the same tag a job names with torch (this machine: no GPU visible to the planning layer)
    from bpttbench.hardware import check_result_set_tag

    check_result_set_tag(tag, "cpu")
    print(f"tag without torch: {tag}")


def test_snakemake_dry_run_imports_no_torch(no_torch_env, tmp_path: Path) -> None:
    env, marker = no_torch_env
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / name)
    (work / "benchmarks").mkdir()
    shutil.copy2(REPO / "benchmarks" / "targets.yaml", work / "benchmarks" / "targets.yaml")
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=240)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert not _torch_imports(marker), _torch_imports(marker)[-3000:]
    # the whole pipeline was planned: every stage's compute jobs are in the DAG
    for rule in ("gradient_flow_block", "claims_run", "long_range_block", "bench_op",
                 "report_html"):
        assert f"rule {rule}:" in text or f"localrule {rule}:" in text, rule
