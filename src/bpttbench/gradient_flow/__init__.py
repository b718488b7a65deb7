"""The gradient-flow stage: one job per block of cells (model x init x hidden), then tables
and figures.

Modules: ``gradients`` (BPTT and the per-lag statistics), ``cells`` (one cell, one block),
``blocks`` (a block's Parquet folder), ``collect`` (blocks -> the contract tables),
``figures`` (the stage's plots), ``cli`` (``bpttbench gradient-flow cell|block|collect|figures``).
This module imports nothing heavy, so that the command line stays fast.
"""
