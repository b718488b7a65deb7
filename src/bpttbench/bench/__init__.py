"""Performance benchmarks of the Jacobian engine against the alternatives a user would reach for.

Ops (:mod:`.ops`): the RNN adjoint chain on a k-vector frame, the full Lyapunov step
(chain + QR), LSTM/GRU Jacobian construction, and BPTT with per-step gradients. Variants
(:mod:`.variants`, one factory table): ``cupy`` kernels, a per-step ``torch`` loop,
``torch_func`` autodiff, ``numpy`` on the CPU, and the ``fused`` torch.nn modules (cuDNN).
Every variant's output is checked against a float64 reference before it is timed
(:mod:`.runner`); timings use CUDA events or perf_counter with medians and IQRs
(:mod:`.timing`), and sit on a roofline of the machine's measured GEMM rate and copy
bandwidth. See docs/bench.md. The command line: :mod:`.cli` (``bpttbench bench ...``).

Nothing is imported here, so that the command line and the workflow's planning layer can
name this package without importing torch.
"""
