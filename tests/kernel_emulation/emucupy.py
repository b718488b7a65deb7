"""A stand-in for the ``cupy`` module that runs the CUDA kernels as host C++ (tests only).

``install(monkeypatch)`` puts a :class:`FakeCupy` in ``cupy_kernels.cp`` (the CuPy backend and
the launch wrappers take their ``cupy`` from there). Array operations are
numpy's (the backend's ``cp.zeros``, ``cp.matmul``... are numpy's, on the host); a
``RawModule(code=...)`` compiles exactly the code the backend hands over (its
``kernel_source``) with ``g++`` against ``shim.h``, cached per source hash; a ``RawKernel``
call checks, before running anything:

- the argument count and each argument's type against the kernel's C++ signature
  (``float*`` <- float32 array, ``int`` <- numpy.int32, ``long long`` <- numpy.int64; a Python
  int or a non-contiguous array is refused, as is a pair of overlapping arrays: the kernels
  declare their pointers ``__restrict__``);
- the launch limits: block <= 1024 threads (and <= ``__launch_bounds__``), block.z <= 64,
  grid.x < 2^31, grid.y and grid.z <= 65,535, dynamic shared memory <= 48 KB unless the
  kernel's ``max_dynamic_shared_size_bytes`` was raised, which may not exceed 227 KB (H100);

and after the launch: every array is run inside a buffer with 4 KB guard zones of signalling
NaNs on both sides, so an out-of-bounds read gives NaN and an out-of-bounds write is reported;
arrays declared ``const`` must be bitwise unchanged. ``order_seed`` (0: each barrier interval
runs its threads in order; else a seeded shuffled order) and ``ftz`` (flush float32 denormals,
as CuPy's ``-ftz=true``; on by default for kernels that take float arrays) are attributes of
the :class:`Emulator`. With ``count_ops`` (``install(monkeypatch, count_ops=True)``) the
stand-in's arrays are emuarrays.DeviceArrays, which record CuPy's own launches (array ops,
memsets, copies) in ``Emulator.array_ops`` (emuarrays.py says what counts as one).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from emuarrays import Creation, DeviceArray, device, host

HERE = Path(__file__).resolve().parent
SHIM = HERE / "shim.h"
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math",
            "-U_FORTIFY_SOURCE", "-fno-extern-tls-init", "-w"]  # fmt: skip
GUARD = 4096  # bytes of guard zone on each side of every array (a multiple of 8)
# guard pattern per element type: signalling NaNs, which arithmetic turns into quiet NaNs, so a
# NaN computed from a guard read and stored out of bounds still shows as a changed guard
GUARD_BYTES = {
    np.dtype(np.float64): np.frombuffer(np.array([0x7FF4000000000000], np.uint64).tobytes(), np.uint8),
    np.dtype(np.float32): np.frombuffer(np.array([0x7FA00000] * 2, np.uint32).tobytes(), np.uint8),
}
SMEM_DEFAULT = 48 * 1024
SMEM_OPTIN = 232448  # H100: 227 KB
MAX_THREADS = 1024
POINTEE = {"float": np.dtype(np.float32), "double": np.dtype(np.float64)}
SCALARS = {"int": np.int32, "long long": np.int64, "unsigned int": np.uint32}
CTYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.uint32: ctypes.c_uint32}


class LaunchError(RuntimeError):
    """A launch CUDA would refuse, or a memory error the harness caught."""


@dataclass
class Param:
    ctype: str  # as declared, e.g. "const float*"
    name: str
    const: bool = False
    pointee: np.dtype | None = None  # pointer parameters
    scalar: type | None = None  # scalar parameters


@dataclass
class Signature:
    name: str
    params: list[Param]
    launch_bounds: int | None


def cache_dir() -> Path:
    root = os.environ.get("BPTTBENCH_EMU_CACHE") or Path(tempfile.gettempdir()) / "bpttbench-kernel-emu"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_signatures(code: str) -> dict[str, Signature]:
    """The extern "C" __global__ functions of code, after the preprocessor (macros expanded)."""
    proc = subprocess.run([CXX, "-E", "-P", "-x", "c++", "-"], input=code, capture_output=True,
                          text=True, check=True)  # fmt: skip
    text = " ".join(proc.stdout.split())
    pat = re.compile(
        r'extern "C" __global__ void (?:__launch_bounds__\s*\(\s*(\d+)\s*\)\s*)?(\w+)\s*\(([^)]*)\)'
    )
    sigs = {}
    for m in pat.finditer(text):
        params = []
        for raw in m.group(3).split(","):
            raw = raw.strip().replace(" *", "*")
            pm = re.fullmatch(r"(.*?)\s*(\w+)", raw)
            assert pm, raw
            ctype, name = pm.group(1).strip(), pm.group(2)
            base = ctype.replace("const", "").replace("__restrict__", "").strip()
            p = Param(ctype, name, const=ctype.startswith("const"))
            if base.endswith("*"):
                p.pointee = POINTEE[base[:-1].strip()]
            else:
                p.scalar = SCALARS[base]
            params.append(p)
        sigs[m.group(2)] = Signature(m.group(2), params, int(m.group(1)) if m.group(1) else None)
    return sigs


def _thunk(sig: Signature) -> str:
    casts = ", ".join(f"*({p.ctype}*)a[{i}]" for i, p in enumerate(sig.params))
    return f'extern "C" void emu_thunk_{sig.name}(void** a) {{ {sig.name}({casts}); }}\n'


_BUILD_LOCK = threading.Lock()


def build(code: str) -> tuple[ctypes.CDLL, dict[str, Signature]]:
    """Compile code (+ shim + thunks) to a shared library, cached by content hash."""
    sigs = parse_signatures(code)
    full = f'#include "{SHIM}"\n#line 1 "kernel.cu"\n{code}\n' + "".join(map(_thunk, sigs.values()))
    key = hashlib.sha256("\0".join([full, SHIM.read_text(), CXX, *CXXFLAGS]).encode()).hexdigest()[:20]
    so = cache_dir() / f"kern_{key}.so"
    with _BUILD_LOCK:
        if not so.exists():
            src = cache_dir() / f"kern_{key}.{os.getpid()}.cpp"
            src.write_text(full)
            tmp = so.with_suffix(f".{os.getpid()}.tmp")
            proc = subprocess.run([CXX, *CXXFLAGS, "-o", str(tmp), str(src)], capture_output=True,
                                  text=True)  # fmt: skip
            src.unlink()
            if proc.returncode:
                raise RuntimeError(f"host build of the kernel failed:\n{proc.stderr[-4000:]}")
            tmp.replace(so)
    lib = ctypes.CDLL(str(so))
    lib.emu_launch.restype = ctypes.c_int
    lib.emu_launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint),
                               ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t, ctypes.c_ulonglong,
                               ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]  # fmt: skip
    return lib, sigs


@dataclass
class Launch:
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int


@dataclass
class Emulator:
    order_seed: int = 0
    ftz: bool = True
    launches: list[Launch] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # kernel name -> code it came from
    options: list[tuple[str, ...]] = field(default_factory=list)
    count_ops: bool = False  # hand out DeviceArrays that record CuPy's own launches
    array_ops: list[str] = field(default_factory=list)  # those launches, by op name
    lock: threading.Lock = field(default_factory=threading.Lock)


def _dims(v: Any, what: str) -> tuple[int, int, int]:
    if isinstance(v, int | np.integer):
        v = (v,)
    v = tuple(v)
    if not 1 <= len(v) <= 3 or not all(isinstance(x, int | np.integer) for x in v):
        raise LaunchError(f"{what} must be 1 to 3 integers, got {v!r}")
    v = tuple(int(x) for x in v) + (1,) * (3 - len(v))
    if min(v) < 1:
        raise LaunchError(f"{what} {v}: every dimension must be >= 1")
    return v  # type: ignore[return-value]


class FakeKernel:
    def __init__(self, emu: Emulator, lib: ctypes.CDLL, sig: Signature) -> None:
        self._emu, self._lib, self.sig = emu, lib, sig
        self._thunk = ctypes.cast(lib[f"emu_thunk_{sig.name}"], ctypes.c_void_p)
        self._max_dyn = SMEM_DEFAULT

    @property
    def max_dynamic_shared_size_bytes(self) -> int:
        return self._max_dyn

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value: int) -> None:
        if not 0 <= int(value) <= SMEM_OPTIN:
            raise LaunchError(f"{self.sig.name}: max_dynamic_shared_size_bytes={value} exceeds the "
                              f"opt-in maximum {SMEM_OPTIN}")  # fmt: skip
        self._max_dyn = int(value)

    def _check_launch(self, grid: tuple, block: tuple, shared_mem: int) -> None:
        name = self.sig.name
        nthr = block[0] * block[1] * block[2]
        if block[0] > 1024 or block[1] > 1024 or block[2] > 64 or nthr > MAX_THREADS:
            raise LaunchError(f"{name}: block {block} exceeds the limits (x, y <= 1024, z <= 64, "
                              f"<= {MAX_THREADS} threads)")  # fmt: skip
        if self.sig.launch_bounds is not None and nthr > self.sig.launch_bounds:
            raise LaunchError(f"{name}: {nthr} threads > __launch_bounds__({self.sig.launch_bounds})")
        if grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535:
            raise LaunchError(f"{name}: grid {grid} exceeds the limits (x < 2^31, y, z <= 65535)")
        limit = max(SMEM_DEFAULT, self._max_dyn)
        if not 0 <= shared_mem <= limit:
            raise LaunchError(f"{name}: {shared_mem} B of dynamic shared memory, allowed {limit} "
                              "(raise max_dynamic_shared_size_bytes up to 227 KB)")  # fmt: skip

    def __call__(self, grid, block, args, shared_mem: int = 0, stream: Any = None, **kw: Any) -> None:
        if kw:
            raise LaunchError(f"{self.sig.name}: unsupported launch options {sorted(kw)}")
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        self._check_launch(grid, block, int(shared_mem))
        params = self.sig.params
        if not isinstance(args, tuple | list) or len(args) != len(params):
            raise LaunchError(f"{self.sig.name}: {len(args)} arguments, the kernel takes {len(params)}")
        args = [host(a) for a in args]  # plain views of DeviceArrays (no op is recorded)
        holders: list[Any] = []
        arrays: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []  # (i, arr, buf, before)
        for i, (p, a) in enumerate(zip(params, args, strict=True)):
            where = f"{self.sig.name} argument {i} ({p.ctype} {p.name})"
            if p.pointee is not None:
                if not isinstance(a, np.ndarray):
                    raise LaunchError(f"{where}: expected an array, got {type(a).__name__}")
                if a.dtype != p.pointee:
                    raise LaunchError(f"{where}: array of {a.dtype}, expected {p.pointee}")
                if not a.flags.c_contiguous:
                    raise LaunchError(f"{where}: array is not C-contiguous")
                for j, _b, _, _ in arrays:
                    if np.shares_memory(a, args[j]):
                        raise LaunchError(f"{where} overlaps argument {j} (__restrict__ pointers)")
                raw = a.reshape(-1).view(np.uint8)
                reps = 2 * GUARD // 8 + -(-raw.size // 8)
                buf = np.tile(GUARD_BYTES[a.dtype], reps)[: 2 * GUARD + raw.size]
                buf[GUARD : GUARD + raw.size] = raw
                arrays.append((i, a, buf, raw.copy()))
                holders.append(ctypes.c_void_p(buf.ctypes.data + GUARD))
            else:
                if type(a) is not p.scalar:
                    raise LaunchError(f"{where}: got {type(a).__name__}, expected numpy.{p.scalar.__name__}")
                holders.append(CTYPES[p.scalar](int(a)))
        argv = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        ftz = int(self._emu.ftz and any(p.pointee == np.float32 for p in params))
        err = ctypes.create_string_buffer(1024)
        with self._emu.lock:
            self._emu.launches.append(Launch(self.sig.name, grid, block, int(shared_mem)))
            rc = self._lib.emu_launch(self._thunk, argv, (ctypes.c_uint * 3)(*grid),
                                      (ctypes.c_uint * 3)(*block), int(shared_mem),
                                      int(self._emu.order_seed), ftz, err, len(err))  # fmt: skip
        if rc:
            raise LaunchError(f"{self.sig.name}: {err.value.decode()}")
        for i, a, buf, before in arrays:
            p = params[i]
            n = before.size
            pattern = np.tile(GUARD_BYTES[a.dtype], 2 * GUARD // 8 + -(-n // 8))
            zones = (("before", buf[:GUARD], pattern[:GUARD]),
                     ("after", buf[GUARD + n :], pattern[GUARD + n : 2 * GUARD + n]))  # fmt: skip
            for side, zone, ref in zones:
                bad = np.flatnonzero(zone != ref)
                if bad.size:
                    off = (bad[0] - GUARD) if side == "before" else bad[0]
                    raise LaunchError(f"{self.sig.name}: out-of-bounds write {side} argument {i} "
                                      f"({p.name}) at byte offset {off}")  # fmt: skip
            inner = buf[GUARD : GUARD + n]
            if p.const:
                if not np.array_equal(inner, before):
                    raise LaunchError(f"{self.sig.name}: const argument {i} ({p.name}) was written")
            else:
                a.reshape(-1).view(np.uint8)[...] = inner


class FakeModule:
    def __init__(self, emu: Emulator, code: str, options: tuple[str, ...]) -> None:
        self._emu = emu
        self._lib, self._sigs = build(code)
        emu.options.append(tuple(options))
        for name in self._sigs:
            emu.sources[name] = code

    def get_function(self, name: str) -> FakeKernel:
        if name not in self._sigs:
            raise LaunchError(f"no kernel {name!r} in the module; it has {sorted(self._sigs)}")
        return FakeKernel(self._emu, self._lib, self._sigs[name])


class _Device:
    def __init__(self, device_id: int = 0) -> None:
        self.id = int(device_id)
        self.attributes = {
            "MaxSharedMemoryPerBlockOptin": SMEM_OPTIN,
            "MaxSharedMemoryPerBlock": SMEM_DEFAULT,
            "MaxThreadsPerBlock": MAX_THREADS,
        }
        self.compute_capability = "90"

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _Stream:
    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    @classmethod
    def from_external(cls, obj: Any) -> _Stream:
        return cls()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class FakeCupy(types.ModuleType):
    """``cupy`` for the backend: numpy arrays, the emulator's RawModule."""

    def __init__(self, emu: Emulator) -> None:
        super().__init__("cupy")
        self.emulator = emu
        self.__version__ = "14.2.0-emulated"
        self.ndarray = np.ndarray
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
            Device=_Device, Stream=_Stream,
        )  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        if self.emulator.count_ops and hasattr(Creation, name):
            return getattr(Creation, name)
        return getattr(np, name)

    def RawModule(self, code: str, options: tuple[str, ...] = (), **kw: Any) -> FakeModule:  # noqa: N802
        if kw:
            raise LaunchError(f"RawModule: unsupported options {sorted(kw)}")
        return FakeModule(self.emulator, code, options)

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> np.ndarray:
        """Writable, like CuPy's (numpy's broadcast views are read-only)."""
        a = np.asarray(host(a))
        view = np.broadcast_to(a, shape)
        out = np.lib.stride_tricks.as_strided(a, view.shape, view.strides, writeable=True)
        return device(out) if self.emulator.count_ops else out

    @staticmethod
    def asnumpy(a: Any) -> np.ndarray:
        return np.array(host(a), copy=True)


def install(monkeypatch: Any, **settings: Any) -> Emulator:
    """Route bpttbench.jacobians.cupy_kernels to the emulator for the rest of the test."""
    from bpttbench.jacobians import cupy_kernels

    emu = Emulator(**settings)
    monkeypatch.setattr(cupy_kernels, "cp", FakeCupy(emu))
    monkeypatch.setattr(DeviceArray, "ops", emu.array_ops if emu.count_ops else None)
    cupy_kernels._module.cache_clear()  # the caller clears both again at teardown
    cupy_kernels._optin_smem.cache_clear()
    return emu
