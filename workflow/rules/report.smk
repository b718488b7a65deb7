# Stage: the manifest and the self-contained HTML report of a result set.


# Reads the collected summary, not the temp per-block files: a config change then
# rebuilds the manifest and report only, never the sweep.
rule manifest:
    input:
        # The manifest records the machine and commit that measured the set: a fresh clone
        # with shuffled mtimes must never rewrite it (ancient), but a rerun of the sweep must
        # (its temp block records are regenerated; missing after a clone, they trigger nothing).
        summary=ancient(contract.table_file("summary")),
        blocks=manifest_block_files,
    output:
        "results/{hw}/manifest.json",
    params:
        cfg=CONFIG_JSON,
    log:
        "logs/{hw}/manifest.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("small"),
    shell:
        "bpttbench report manifest --config-json {params.cfg:q} --hw-tag {wildcards.hw}"
        " --summary {input.summary} --out {output} > {log} 2>&1"


rule report_html:
    input:
        manifest="results/{hw}/manifest.json",
        parts=report_inputs,
    output:
        "results/{hw}/report.html",
    params:
        captions=REPORT_CAPTIONS,
    log:
        "logs/{hw}/report_html.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("small"),
    shell:
        "bpttbench report build results/{wildcards.hw} --out {output} --captions {params.captions}"
        " > {log} 2>&1"
