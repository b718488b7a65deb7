"""Every CUDA kernel file (the engine's, the forward record's and the BPTT delta kernels) compiles to
a cubin for sm_80 (A100), sm_90 (H100) and sm_100 (B200).

Runs in CI without a GPU. NVRTC, the compiler cupy.RawModule uses, comes from the
nvidia-cuda-nvrtc wheel through CuPy's own binding (never skipped); nvcc, where installed,
also compiles each file (skipped, with the reason, when it is absent).
Also checks that every kernel file opens with its comment block (launch shape, memory
layout, limits) that the entry points the CuPy wrapper loads exist, and that every file instantiates its
dtypes one way (launch.cuh's FOR_FLOAT_TYPES) and takes its launch constants from launch.cuh.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

KERNEL_DIR = Path(__file__).resolve().parents[1] / "src" / "bpttbench" / "kernels"
KERNEL_FILES = sorted(KERNEL_DIR.glob("*.cu"))


def _nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return str(Path(root) / "bin" / "nvcc")
    return None


NVCC = _nvcc()


def test_kernel_files_exist_and_document_themselves():
    names = {p.name for p in KERNEL_FILES}
    assert {"rnn_chain.cu", "gate_jacobians.cu", "batched_qr.cu", "bptt_delta.cu",
            "bptt_delta_gated.cu", "forward_record.cu"} <= names
    for path in KERNEL_FILES:
        head = path.read_text().split("\n\n", 1)[0].lower()
        assert head.startswith("//"), f"{path.name} must open with a comment block"
        for word in ("launch", "layout", "limit"):
            assert word in path.read_text()[:4000].lower(), f"{path.name}: no '{word}' in header"


def _expanded_entry_points(fname: str) -> set[str]:
    """The extern "C" __global__ names of a kernel file as compiled: its headers inlined and
    its macros expanded (the C preprocessor of g++, which needs no CUDA)."""
    from bpttbench.jacobians.cupy_kernels import kernel_source

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ preprocessor (g++ or c++) on PATH")
    proc = subprocess.run([cxx, "-E", "-P", "-x", "c++", "-"], input=kernel_source(fname),
                          capture_output=True, text=True, check=True)  # fmt: skip
    text = " ".join(proc.stdout.split())
    return set(re.findall(r'extern "C" __global__ void (?:__launch_bounds__\s*\(\s*\w+\s*\)'
                          r"\s*)?(\w+)\s*\(", text))


def test_wrapper_entry_points_are_defined():
    """Every entry point the CuPy wrapper loads is in its file, for both dtypes, after the
    preprocessor (so however the file's macros build the names)."""
    from bpttbench.jacobians.cupy_kernels import KERNEL_ENTRY_POINTS

    for fname, bases in KERNEL_ENTRY_POINTS.items():
        defined = _expanded_entry_points(fname)
        wanted = {f"{base}_{suffix}" for base in bases for suffix in ("f32", "f64")}
        assert wanted <= defined, (fname, sorted(wanted - defined))


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_one_dtype_instantiation_and_launch_constants_in_one_place(path):
    """Every file instantiates its extern "C" entry points through FOR_FLOAT_TYPES (never a
    hand-written _f32/_f64 pair) and defines no launch constant itself: launch.cuh holds them,
    and the Python wrappers read the same values from it."""
    from bpttbench.jacobians import cupy_kernels

    text = path.read_text()
    assert '#include "launch.cuh"' in text
    assert re.search(r"^FOR_FLOAT_TYPES\(\w+\)$", text, re.M), path.name
    assert not re.search(r"\w+_f(32|64)\s*\(", text), "hand-written dtype flavour"
    assert not re.search(r"^#define (NTHREADS|TILE)", text, re.M), "launch constant redefined"
    header = (KERNEL_DIR / "launch.cuh").read_text()
    for name in ("NTHREADS", "TILE", "GRID_STRIDE_BLOCKS_MAX"):
        value = int(re.search(rf"^#define {name} (\d+)$", header, re.M).group(1))
        assert getattr(cupy_kernels, name) == value, name


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_to_cubin(path, arch, tmp_path):
    out = tmp_path / f"{path.stem}_{arch}.cubin"
    proc = subprocess.run(
        [NVCC, "--cubin", f"-arch={arch}", "-std=c++17", "-Werror", "all-warnings",
         "-o", str(out), str(path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"nvcc failed for {path.name} ({arch}):\n{proc.stderr}"
    assert out.stat().st_size > 0


@pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_inlined_source_compiles(path, tmp_path):
    """What CuPy compiles is the file with its local headers inlined: that must build too."""
    from bpttbench.jacobians.cupy_kernels import kernel_source

    src = tmp_path / path.name  # alone in a folder: an un-inlined #include would fail here
    src.write_text(kernel_source(path.name))
    assert "#include \"" not in src.read_text()
    out = tmp_path / f"{path.stem}.cubin"
    proc = subprocess.run(
        [NVCC, "--cubin", "-arch=sm_90", "-std=c++17", "-Werror", "all-warnings", "-o", str(out),
         str(src)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"nvcc failed for inlined {path.name}:\n{proc.stderr}"


# What CuPy 14 passes to NVRTC for cupy.RawModule(code, options=NVRTC_OPTIONS) on a GPU of
# compute capability XY (cupy/cuda/compiler.py: _compile_with_cache_cuda adds -ftz=true,
# _compile_using_nvrtc_no_warning the -arch and --device-as-default-execution-space).
def _cupy_nvrtc_options(arch: str) -> tuple[str, ...]:
    from bpttbench.jacobians.cupy_kernels import NVRTC_OPTIONS

    return (*NVRTC_OPTIONS, "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")


@pytest.mark.parametrize("arch", ["80", "90", "100"])
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_with_cupys_nvrtc(path, arch):
    """The source CuPy compiles (headers inlined), through CuPy's own NVRTC path, with CuPy's
    options, to a cubin for sm_80, sm_90 and sm_100. Needs no GPU or driver: CuPy and the
    nvidia-cuda-nvrtc wheel are in the ``test`` extra, so this never skips."""
    import struct

    from cupy.cuda import compiler  # needs cupy-cuda13x and nvidia-cuda-nvrtc (pip install .[test])

    from bpttbench.jacobians.cupy_kernels import KERNEL_ENTRY_POINTS, kernel_source

    print("NVRTC", compiler._get_nvrtc_version())
    prog = compiler._NVRTCProgram(kernel_source(path.name), path.name, method="cubin")
    try:
        cubin, _ = prog.compile(_cupy_nvrtc_options(arch))
    except compiler.CompileException as exc:
        pytest.fail(f"NVRTC failed for {path.name} (sm_{arch}):\n{exc}")
    assert cubin[:4] == b"\x7fELF" and struct.unpack_from("<H", cubin, 18)[0] == 190  # EM_CUDA
    e_flags = struct.unpack_from("<I", cubin, 48)[0]
    assert int(arch) in ((e_flags >> 8) & 0xFF, e_flags & 0xFF), hex(e_flags)
    for base in KERNEL_ENTRY_POINTS[path.name]:
        for suffix in ("f32", "f64"):
            assert f"{base}_{suffix}".encode() in cubin, f"{base}_{suffix} missing from the cubin"
