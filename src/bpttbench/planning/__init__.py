"""The planning layer: everything the workflow needs to build its DAG, without torch.

``config`` validation and loading (``bpttbench.config``, jsonschema and YAML only), the
hardware tag (``planning.hardware``: /proc/cpuinfo, ``nvidia-smi``, or an environment
override), job expansion and result paths (``planning.jobs``), the memory estimates that size
GPU jobs (``planning.memory``), and each rule's resources through one helper
(``planning.resources.RuleResources.res``). The Snakefile and the ``.smk`` files import this
package alone; torch is imported only inside job commands (``tests/test_torch_free.py``).
"""
