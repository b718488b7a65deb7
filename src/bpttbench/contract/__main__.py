"""``python -m bpttbench.contract > docs/COLUMNS.md``: the column docs of every table."""

from . import columns_markdown

print(columns_markdown(), end="")
