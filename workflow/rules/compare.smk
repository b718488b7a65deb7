# Stage: compare result sets pairwise (config key compare: [results/A, results/B, ...]).
# `snakemake compare` builds results/compare/<A>__vs__<B>/ for every pair; any pair of sets
# under results/ can also be asked for by path, e.g. results/compare/A__vs__B/summary.html.
# This machine's set is built first if needed; other sets are only read (docs/compare.md).
from bpttbench import contract
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
        # the tables and pages of bpttbench.contract.compare, and its figure for --report
        **{
            role: f"results/compare/{{pair}}/{name}"
            for role, name in OUTPUT_FILES.items()
            if role != "figure"
        },
        figure=contract.figure_outputs(
            "compare", report, folder="results/compare/{pair}", subcategory="{pair}"
        )["agreement"],
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
        **res("figures"),
    shell:
        "bpttbench compare sets {params.a:q} {params.b:q} --out results/compare/{wildcards.pair}"
        " > {log} 2>&1"
