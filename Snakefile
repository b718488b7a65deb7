# bpttbench: vanishing and exploding gradients in RNN, LSTM and GRU trained by BPTT.
# Thin entry point: config, validation and target lists live in workflow/rules/common.smk,
# each stage in its own workflow/rules/<stage>.smk, all logic in the bpttbench package.
from snakemake.utils import min_version

min_version("8.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/gradient_flow.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/long_range.smk"
include: "workflow/rules/validation.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/compare.smk"


rule all:
    input:
        all_targets(),
    default_target: True
