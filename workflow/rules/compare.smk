# Stage: compare result sets pairwise (config key compare: [results/A, results/B, ...]).
# `snakemake compare` builds results/compare/<A>__vs__<B>/ for every pair; any pair of sets
# under results/ can also be asked for by path, e.g. results/compare/A__vs__B/summary.html.
# This machine's set is built first if needed; other sets are only read (docs/compare.md).
from bpttbench import cluster
from bpttbench.compare import OUTPUT_FILES, compare_pairs, pair_folders, pair_input_files

try:
    COMPARE_PAIRS = compare_pairs(config["compare"])
except ValueError as err:
    raise WorkflowError(str(err)) from None


rule compare:
    input:
        expand("results/compare/{pair}/{file}", pair=COMPARE_PAIRS, file=OUTPUT_FILES.values()),


rule compare_pair:
    input:
        lambda wc: pair_input_files(
            wc.pair,
            COMPARE_PAIRS,
            f"results/{HW}",
            [f"results/{HW}/manifest.json"]
            + [p.format(hw=HW) for p in REPORT_INPUTS if "/tables/" in p],
        ),
    output:
        agreement="results/compare/{pair}/agreement.csv",
        timing_ratio="results/compare/{pair}/timing_ratio.csv",
        caveats="results/compare/{pair}/caveats.csv",
        figure=report(
            "results/compare/{pair}/agreement.png",
            caption="../report/agreement.rst",
            category="Comparison",
            subcategory="{pair}",
        ),
        summary_md="results/compare/{pair}/summary.md",
        summary_html="results/compare/{pair}/summary.html",
    params:
        a=lambda wc: pair_folders(wc.pair, COMPARE_PAIRS)[0],
        b=lambda wc: pair_folders(wc.pair, COMPARE_PAIRS)[1],
    wildcard_constraints:
        pair=r"[A-Za-z0-9][A-Za-z0-9._-]*__vs__[A-Za-z0-9][A-Za-z0-9._-]*",
    log:
        "logs/compare/{pair}.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: cluster.mem_mb("figures", attempt),
        runtime=lambda wc, attempt: cluster.runtime_min("figures", attempt),
    shell:
        "bpttbench compare sets {params.a:q} {params.b:q} --out results/compare/{wildcards.pair}"
        " > {log} 2>&1"
