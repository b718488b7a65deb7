# Stage: the gradient-flow sweep, one job per block of cells, then tables and figures.
from bpttbench import contract

# What a compute job asks for (SLURM: docs/slurm.md): res() in common.smk. A block's GPU
# share is its largest cell's estimated peak (bpttbench.planning.memory).
BLOCK_GPU = {"block": PLAN.peaks("gradient_flow")}

GRADIENT_FLOW_TABLES = contract.table_files("gradient_flow")
GRADIENT_FLOW_FIGURES = contract.figure_files("gradient_flow")
REPORT_INPUTS.extend(GRADIENT_FLOW_TABLES.values())
REPORT_INPUTS.extend(GRADIENT_FLOW_FIGURES.values())


# One job per block (model x init x hidden): every seq_len, weight scale and seed of it.
rule gradient_flow_block:
    output:
        temp(directory("results/{hw}/cells/gradient_flow/{block}")),
    params:
        spec=block_spec,
        explicit=hw_tag_flag,
        gpu_run=gpu_run(BLOCK_GPU),
        lags=config["gradient_flow"]["lags"],
    log:
        "logs/{hw}/gradient_flow/{block}.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("compute", gpu=BLOCK_GPU),
    shell:
        "{params.gpu_run} bpttbench gradient-flow block --spec {params.spec:q} --hw-tag {wildcards.hw} {params.explicit}"
        " --lags {params.lags} --out {output} > {log} 2>&1"


rule gradient_flow_collect:
    input:
        gradient_flow_block_files,
    output:
        **GRADIENT_FLOW_TABLES,
        columns="results/{hw}/tables/COLUMNS.md",
    log:
        "logs/{hw}/gradient_flow_collect.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("collect"),
    shell:
        "bpttbench gradient-flow collect --out results/{wildcards.hw}/tables {input} > {log} 2>&1"


rule gradient_flow_figures:
    input:
        **GRADIENT_FLOW_TABLES,
    output:
        **contract.figure_outputs("gradient_flow", report),
    log:
        "logs/{hw}/gradient_flow_figures.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("figures"),
    shell:
        "bpttbench gradient-flow figures --tables results/{wildcards.hw}/tables"
        " --out results/{wildcards.hw}/figures > {log} 2>&1"
