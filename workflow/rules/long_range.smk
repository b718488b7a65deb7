# Stage: the long-range benchmark. Train an unrolled cell on the adding and copy tasks
# (one job per task x model x seq_len), gather the tables, draw the figures.
from bpttbench import contract
from bpttbench.planning.workflow import block_record_files

LONG_RANGE_BLOCKS = PLAN.long_range
LONG_RANGE_THREADS = config["long_range"]["threads"]
# A job's GPU share: its largest run's estimated training graph (bpttbench.planning.memory).
LONG_RANGE_JOB_GPU = {"lr_block": PLAN.peaks("long_range")}
LONG_RANGE_TABLES = {
    "runs": contract.table_file("long_range"),
    "trace": contract.table_file("long_range_trace"),
    "summary": contract.table_file("long_range_summary"),
    "precision": contract.table_file("long_range_precision"),
}
LONG_RANGE_FIGURES = contract.figure_files("long_range")
if LONG_RANGE_BLOCKS:
    REPORT_INPUTS.extend(LONG_RANGE_TABLES.values())
    REPORT_INPUTS.extend(LONG_RANGE_FIGURES.values())


# One job per task x model x seq_len: every clip setting and seed of it.
rule long_range_block:
    output:
        temp("results/{hw}/cells/long_range/{lr_block}.json"),
    params:
        spec=lambda wc: PLAN.long_range_spec(wc.lr_block),
        explicit=hw_tag_flag,
        gpu_run=gpu_run(LONG_RANGE_JOB_GPU),
    wildcard_constraints:
        lr_block=r"[A-Za-z0-9._-]+",
    log:
        "logs/{hw}/long_range/{lr_block}.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: LONG_RANGE_THREADS
    resources:
        **res("compute", gpu=LONG_RANGE_JOB_GPU),
    shell:
        "{params.gpu_run} bpttbench long-range run --spec {params.spec:q} --hw-tag {wildcards.hw}"
        " {params.explicit} --threads {threads} --out {output} > {log} 2>&1"


rule long_range_collect:
    input:
        lambda wc: block_record_files(LONG_RANGE_BLOCKS, wc.hw),
    output:
        **LONG_RANGE_TABLES,
    log:
        "logs/{hw}/long_range_collect.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("collect"),
    shell:
        "bpttbench long-range collect --out results/{wildcards.hw}/tables {input}"
        " > {log} 2>&1"


rule long_range_figures:
    input:
        **LONG_RANGE_TABLES,
        horizon=contract.table_file("summary"),
    output:
        **contract.figure_outputs("long_range", report),
    log:
        "logs/{hw}/long_range_figures.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("figures"),
    shell:
        "bpttbench long-range figures --tables results/{wildcards.hw}/tables"
        " --horizon-summary {input.horizon} --out results/{wildcards.hw}/figures"
        " > {log} 2>&1"
