# Stage: the claims. Each claim of the seed texts and of the theory is one job that measures
# it against its prediction (bpttbench claims run); then the table and the figures.
from bpttbench import contract
from bpttbench.planning.workflow import CLAIM_IDS, CURVES, OVERVIEW, TABLE, job_config

CLAIMS_RUN = PLAN.claims
# The overview and one figure per claim that runs (bpttbench.contract.claims).
CLAIMS_FIGURES = [OVERVIEW, *(f"claim_{c}" for c in CLAIMS_RUN)]
CLAIMS_TABLES = {
    "table": f"results/{{hw}}/tables/{TABLE}",
    "curves": f"results/{{hw}}/tables/{CURVES}",
}
if CLAIMS_RUN:  # claims.run: [] switches the stage off
    REPORT_INPUTS.append(CLAIMS_TABLES["table"])
    REPORT_INPUTS.extend(contract.figure_files("claims", names=CLAIMS_FIGURES).values())


rule claims_run:
    output:
        temp("results/{hw}/cells/claims/{claim}.json"),
    params:
        cfg=lambda wc: job_config(config, wc.claim),
        explicit=hw_tag_flag,
    wildcard_constraints:
        claim="|".join(CLAIM_IDS),
    log:
        "logs/{hw}/claims/{claim}.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("compute", gpu=True),
    shell:
        "bpttbench claims run {wildcards.claim} --config-json {params.cfg:q}"
        " --hw-tag {wildcards.hw} {params.explicit} --threads {threads} --out {output}"
        " > {log} 2>&1"


rule claims_collect:
    input:
        lambda wc: expand(
            "results/{hw}/cells/claims/{claim}.json", hw=wc.hw, claim=CLAIMS_RUN
        ),
    output:
        **CLAIMS_TABLES,
    log:
        "logs/{hw}/claims_collect.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("small"),
    shell:
        "bpttbench claims collect --out {output.table} --curves {output.curves} {input}"
        " > {log} 2>&1"


rule claims_figures:
    input:
        **CLAIMS_TABLES,
    output:
        **contract.figure_outputs("claims", report, names=CLAIMS_FIGURES),
    log:
        "logs/{hw}/claims_figures.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("figures"),
    shell:
        "bpttbench claims figures --tables results/{wildcards.hw}/tables"
        " --out results/{wildcards.hw}/figures > {log} 2>&1"
