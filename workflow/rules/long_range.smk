# Stage: the long-range benchmark. Train an unrolled cell on the adding and copy tasks
# (one job per task x model x seq_len), gather the tables, draw the figures.
from bpttbench import cluster, contract
from bpttbench.memory import long_range_peak_bytes
from bpttbench.long_range.sweep import block_record_files, block_spec_json, long_range_blocks

try:
    LONG_RANGE_BLOCKS = long_range_blocks(config)
except ConfigError as err:
    raise WorkflowError(str(err)) from None
LONG_RANGE_THREADS = config["long_range"]["threads"]
LONG_RANGE_GPU = cluster.gpu_resources(config)  # {"gpu": 1} when the device is CUDA
LONG_RANGE_JOB_GPU = {
    b: gpu_job(long_range_peak_bytes(runs, "cuda" if LONG_RANGE_GPU else "cpu"))
    for b, runs in LONG_RANGE_BLOCKS.items()
}
LONG_RANGE_TABLES = {
    "runs": "results/{hw}/tables/long_range.parquet",
    "trace": "results/{hw}/tables/long_range_trace.parquet",
    "summary": "results/{hw}/tables/long_range_summary.csv",
    "precision": "results/{hw}/tables/long_range_precision.csv",
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
        spec=lambda wc: block_spec_json(LONG_RANGE_BLOCKS, wc.lr_block),
        explicit=hw_tag_flag,
        gpu_run=job_gpu_prefix(LONG_RANGE_JOB_GPU, "lr_block"),
    wildcard_constraints:
        lr_block=r"[A-Za-z0-9._-]+",
    log:
        "logs/{hw}/long_range/{lr_block}.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: LONG_RANGE_THREADS
    resources:
        mem_mb=lambda wc, attempt: cluster.mem_mb("compute", attempt, gpu=bool(LONG_RANGE_GPU)),
        runtime=lambda wc, attempt: cluster.runtime_min("compute", attempt),
        gpu_mem_mb=job_gpu_resource(LONG_RANGE_JOB_GPU, "lr_block", "gpu_mem_mb"),
        gpu_jobs=job_gpu_resource(LONG_RANGE_JOB_GPU, "lr_block", "gpu_jobs"),
        **LONG_RANGE_GPU,
    shell:
        "{params.gpu_run} bpttbench long-range-block --spec {params.spec:q} --hw-tag {wildcards.hw}"
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
        mem_mb=lambda wc, attempt: cluster.mem_mb("collect", attempt),
        runtime=lambda wc, attempt: cluster.runtime_min("collect", attempt),
    shell:
        "bpttbench long-range-collect --out-dir results/{wildcards.hw}/tables {input}"
        " > {log} 2>&1"


rule long_range_figures:
    input:
        **LONG_RANGE_TABLES,
        horizon="results/{hw}/tables/summary.csv",
    output:
        **contract.figure_outputs("long_range", report),
    log:
        "logs/{hw}/long_range_figures.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: cluster.mem_mb("figures", attempt),
        runtime=lambda wc, attempt: cluster.runtime_min("figures", attempt),
    shell:
        "bpttbench long-range-figures --tables results/{wildcards.hw}/tables"
        " --horizon-summary {input.horizon} --out-dir results/{wildcards.hw}/figures"
        " > {log} 2>&1"
