# Stage: the gradient-flow sweep, one job per block of cells, then tables and figures.
# What a compute job asks for (SLURM: docs/slurm.md): res() in common.smk. A block's GPU
# share is its largest cell's estimated peak (bpttbench.planning.memory).
BLOCK_GPU = {"block": PLAN.peaks("gradient_flow")}

GRADIENT_FLOW_TABLES = {
    "gradient_flow": "results/{hw}/tables/gradient_flow.parquet",
    "summary": "results/{hw}/tables/summary.csv",
    "lyapunov": "results/{hw}/tables/lyapunov.parquet",
    "chain_spectrum": "results/{hw}/tables/chain_spectrum.parquet",
}
GRADIENT_FLOW_FIGURES = [
    "gradient_norm_by_lag",
    "growth_rate_by_scale",
    "horizon_heatmap",
    "lyapunov_spectrum",
    "chain_singular_values",
]
REPORT_INPUTS.extend(GRADIENT_FLOW_TABLES.values())
REPORT_INPUTS.extend(f"results/{{hw}}/figures/{n}.png" for n in GRADIENT_FLOW_FIGURES)


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
        gradient_norm_by_lag=report(
            "results/{hw}/figures/gradient_norm_by_lag.png",
            caption="../report/gradient_norm_by_lag.rst",
            category="Gradient flow",
        ),
        growth_rate_by_scale=report(
            "results/{hw}/figures/growth_rate_by_scale.png",
            caption="../report/growth_rate_by_scale.rst",
            category="Gradient flow",
        ),
        horizon_heatmap=report(
            "results/{hw}/figures/horizon_heatmap.png",
            caption="../report/horizon_heatmap.rst",
            category="Gradient flow",
        ),
        lyapunov_spectrum=report(
            "results/{hw}/figures/lyapunov_spectrum.png",
            caption="../report/lyapunov_spectrum.rst",
            category="Jacobian chains",
        ),
        chain_singular_values=report(
            "results/{hw}/figures/chain_singular_values.png",
            caption="../report/chain_singular_values.rst",
            category="Jacobian chains",
        ),
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
