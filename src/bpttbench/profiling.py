"""Count what a piece of torch code costs per step: kernel launches and host round-trips.

- Launches: the torch profiler's leaf ``aten::`` ops that do work. View and allocation ops
  (``view``, ``slice``, ``empty`` ...) launch no kernel on a GPU, so they are not counted;
  a leaf op is one without ``aten::`` children (``linear`` -> ``addmm`` counts once).
- Host round-trips: calls that bring a tensor's value to the host (``.cpu()``, ``.numpy()``,
  ``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``). On a GPU each one waits for every
  queued kernel; on the CPU they cost nothing, but they are the same calls, so counting
  them here says how many syncs the code makes on a GPU.

Per-step figures are differences between two sequence lengths, so fixed per-cell work
(set-up, the final read-back) cancels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

#: aten ops that only make views, allocate or reinterpret memory: no kernel on a GPU
NO_KERNEL_OPS = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::as_strided", "aten::slice",
    "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::t", "aten::transpose",
    "aten::expand", "aten::alias", "aten::detach", "aten::empty", "aten::empty_like",
    "aten::empty_strided", "aten::split", "aten::split_with_sizes", "aten::chunk",
    "aten::unbind", "aten::permute", "aten::numpy_T", "aten::lift_fresh", "aten::resolve_conj",
    "aten::resolve_neg", "aten::result_type", "aten::_reshape_alias", "aten::narrow",
    "aten::unfold", "aten::lift", "aten::set_", "aten::resize_", "aten::is_nonzero",
    "aten::_local_scalar_dense", "aten::item", "aten::contiguous", "aten::mT",
    "aten::matrix_H", "aten::adjoint", "aten::movedim", "aten::flatten", "aten::_to_copy_view",
    "aten::zeros_like_view", "aten::broadcast_tensors", "aten::expand_as", "aten::view_as",
    "aten::to", "aten::type_as", "aten::_has_compatible_shallow_copy_type",
})

#: tensor methods that read a value back to the host
HOST_READS = frozenset({"cpu", "numpy", "item", "tolist", "__bool__", "__float__", "__int__",
                        "__index__"})


def count_launches(fn: Callable[[], Any]) -> int:
    """Leaf aten ops that launch work while ``fn()`` runs (see the module doc)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    count = 0
    for ev in prof.events():
        name = ev.name
        if not name.startswith("aten::") or name in NO_KERNEL_OPS:
            continue
        if any(ch.name.startswith("aten::") and ch.name not in NO_KERNEL_OPS
               for ch in ev.cpu_children):
            continue
        count += 1
    return count


class _HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        if getattr(func, "__name__", "") in HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_host_reads(fn: Callable[[], Any]) -> int:
    """Tensor-to-host reads (GPU syncs) that ``fn()`` makes."""
    with _HostReads() as mode:
        fn()
    return mode.count


def per_step(counter: Callable[[Callable[[], Any]], int], make: Callable[[int], Callable[[], Any]],
             t_short: int, t_long: int) -> float:
    """(count at t_long - count at t_short) / (t_long - t_short): the cost of one more step."""
    if t_long <= t_short:
        raise ValueError(f"t_long={t_long} must exceed t_short={t_short}")
    return (counter(make(t_long)) - counter(make(t_short))) / (t_long - t_short)


def peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the bytes held by tensors allocated while ``fn()`` runs (CPU or GPU).

    From the profiler's allocation events (size > 0) and frees (size < 0) in time order:
    what ``torch.cuda.max_memory_allocated`` reports on a GPU, measured the same way on the
    CPU, without the C allocator's own overhead.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
