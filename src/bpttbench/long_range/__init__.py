"""The long-range dependency benchmark: what vanishing and exploding gradients do to training.

An unrolled ``RecurrentCell`` plus a linear readout is trained with a fixed budget on the
adding problem and the copy-memory task, over models, sequence lengths, gradient clipping
and seeds; its results are set against the gradient horizon of the gradient-flow sweep.

Modules: ``tasks`` (generators, losses, baselines), ``train`` (one run), ``sweep`` (config to
runs and jobs), ``tables``, ``figures``, ``cli`` (``bpttbench long-range <verb>``).
"""

from __future__ import annotations

from .cli import register

__all__ = ["register"]
