"""Every CUDA kernel file compiles to a cubin for sm_80 (A100) and sm_90 (H100).

Runs in CI without a GPU: only nvcc is needed (skipped, with the reason, when it is absent).
Also checks that every kernel file opens with its comment block (launch shape, memory
layout, limits) and that the entry points the CuPy wrapper loads exist.
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
    assert {"rnn_chain.cu", "gate_jacobians.cu", "batched_qr.cu"} <= names
    for path in KERNEL_FILES:
        head = path.read_text().split("\n\n", 1)[0].lower()
        assert head.startswith("//"), f"{path.name} must open with a comment block"
        for word in ("launch", "layout", "limit"):
            assert word in path.read_text()[:4000].lower(), f"{path.name}: no '{word}' in header"


def test_wrapper_entry_points_are_defined():
    from bpttbench.jacobians.cupy_backend import KERNEL_ENTRY_POINTS

    for fname, bases in KERNEL_ENTRY_POINTS.items():
        text = (KERNEL_DIR / fname).read_text()
        for base in bases:
            for suffix in ("f32", "f64"):
                name = f"{base}_{suffix}"
                # defined directly or through the RNN_CHAIN_KERNELS(T, SUFFIX) macro
                assert re.search(rf"\b{name}\b", text) or f"{base}_##SUFFIX" in text, name


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
    from bpttbench.jacobians.cupy_backend import kernel_source

    src = tmp_path / path.name  # alone in a folder: an un-inlined #include would fail here
    src.write_text(kernel_source(path.name))
    assert "#include \"" not in src.read_text()
    out = tmp_path / f"{path.stem}.cubin"
    proc = subprocess.run(
        [NVCC, "--cubin", "-arch=sm_90", "-std=c++17", "-Werror", "all-warnings", "-o", str(out),
         str(src)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"nvcc failed for inlined {path.name}:\n{proc.stderr}"


def _libnvrtc() -> str | None:
    """libnvrtc (what cupy.RawModule compiles with): $BPTTBENCH_NVRTC, the CUDA toolkit, or
    the loader's search path."""
    import ctypes.util
    import glob

    explicit = os.environ.get("BPTTBENCH_NVRTC")
    if explicit and Path(explicit).is_file():
        return explicit
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            hits = sorted(glob.glob(str(Path(root) / "lib64" / "libnvrtc.so*")))
            if hits:
                return hits[0]
    return ctypes.util.find_library("nvrtc")


@pytest.mark.skipif(_libnvrtc() is None, reason="libnvrtc not found (set BPTTBENCH_NVRTC)")
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_kernel_compiles_with_nvrtc(path):
    """The runtime compiler CuPy uses has no C++ standard headers: check the sources build."""
    import ctypes

    where = Path(_libnvrtc())
    for builtins in sorted(where.parent.glob("libnvrtc-builtins.so*")):  # loaded by name later
        ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(where))
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), path.read_bytes(), path.name.encode(),
                                  0, None, None) == 0  # fmt: skip
    try:
        opts = [b"-std=c++17", b"--gpu-architecture=compute_80"]
        rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        assert rc == 0, f"NVRTC failed for {path.name}:\n{log.value.decode()}"
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
