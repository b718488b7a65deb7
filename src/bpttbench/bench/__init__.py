"""Performance benchmarks of the Jacobian engine against the alternatives a user would reach for.

Ops (:mod:`.ops`): the RNN adjoint chain on a k-vector frame, the full Lyapunov step
(chain + QR), LSTM/GRU Jacobian construction, and BPTT with per-step gradients. Variants
(:mod:`.variants`, one factory table): ``cupy`` kernels, a per-step ``torch`` loop,
``torch_func`` autodiff, ``numpy`` on the CPU, and the ``fused`` torch.nn modules (cuDNN).
Every variant's output is checked against a float64 reference before it is timed
(:mod:`.runner`); timings use CUDA events or perf_counter with medians and IQRs
(:mod:`.timing`), and sit on a roofline of the machine's measured GEMM rate and copy
bandwidth. See docs/bench.md.
"""

from bpttbench.bench.cli import register
from bpttbench.bench.ops import OPS, Problem, Shape, get_op, make_problem
from bpttbench.bench.variants import FACTORY, VARIANTS, get_variant

__all__ = ["FACTORY", "OPS", "VARIANTS", "Problem", "Shape", "get_op", "get_variant",
           "make_problem", "register"]
