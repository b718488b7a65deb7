# Stage: the gradient-flow sweep, one job per block of cells, then tables and figures.
from bpttbench import cluster, contract
from bpttbench.memory import block_peak_bytes

# What a compute job asks a scheduler for (SLURM: docs/slurm.md): a GPU when the config's
# device resolves to CUDA, memory and wall time growing with each retry (attempt).
GPU_RESOURCES = cluster.gpu_resources(config)
USES_GPU = bool(GPU_RESOURCES)
BLOCK_DEVICE = "cuda" if USES_GPU else "cpu"
BLOCK_GPU = {b: gpu_job(block_peak_bytes(cells, BLOCK_DEVICE)) for b, cells in BLOCKS.items()}

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
        gpu_run=job_gpu_prefix(BLOCK_GPU, "block"),
        lags=config["gradient_flow"]["lags"],
    log:
        "logs/{hw}/gradient_flow/{block}.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: cluster.mem_mb("compute", attempt, gpu=USES_GPU),
        runtime=lambda wc, attempt: cluster.runtime_min("compute", attempt),
        gpu_mem_mb=job_gpu_resource(BLOCK_GPU, "block", "gpu_mem_mb"),
        gpu_jobs=job_gpu_resource(BLOCK_GPU, "block", "gpu_jobs"),
        **GPU_RESOURCES,
    shell:
        "{params.gpu_run} bpttbench block --spec {params.spec:q} --hw-tag {wildcards.hw} {params.explicit}"
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
        mem_mb=lambda wc, attempt: cluster.mem_mb("collect", attempt),
        runtime=lambda wc, attempt: cluster.runtime_min("collect", attempt),
    shell:
        "bpttbench collect --out-dir results/{wildcards.hw}/tables {input} > {log} 2>&1"


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
        mem_mb=lambda wc, attempt: cluster.mem_mb("figures", attempt),
        runtime=lambda wc, attempt: cluster.runtime_min("figures", attempt),
    shell:
        "bpttbench figures --tables results/{wildcards.hw}/tables"
        " --out-dir results/{wildcards.hw}/figures > {log} 2>&1"
