# Stage: performance benchmarks of the Jacobian engine (docs/bench.md). One job measures
# the machine's peaks, one job per op (or one for all ops: bench.jobs) checks and times every
# variant, then collect (speedup, roofline, targets) and figures. Timing jobs claim every
# core so that nothing runs beside them.
from bpttbench import contract
from bpttbench.planning.workflow import bench_config_json, part_ops

BENCH = config["bench"]
# Timing jobs: one per op, or one ("all") for every op when bench.jobs is single.
BENCH_PARTS = PLAN.bench_parts
# What the bench jobs read of the config: a change elsewhere does not rerun the timing.
BENCH_CONFIG_JSON = bench_config_json(config)
BENCH_TARGETS = os.path.join(workflow.basedir, "benchmarks", "targets.yaml")
BENCH_TABLES = {
    "bench": contract.table_file("bench"),
    "bench_csv": contract.table_file("bench", twin=True),
    "targets": contract.table_file("bench_targets"),
}
BENCH_FIGURES = contract.figure_files("bench")
# A timing job's part of the bench table (the contract's bench_part; temp, collect joins them).
BENCH_PART_FILE = "results/{hw}/cells/bench/{part}.parquet"
if BENCH["enabled"]:
    REPORT_INPUTS.extend([BENCH_TABLES["bench_csv"], BENCH_TABLES["targets"]])
    REPORT_INPUTS.append(contract.table_file("peak"))
    REPORT_INPUTS.extend(BENCH_FIGURES.values())


# Timing jobs take every core of a local run so that nothing runs beside them; where
# Snakemake has no core count (cluster executors) a job asks for one CPU.
BENCH_THREADS = workflow.cores if isinstance(workflow.cores, int) else 1


rule bench_peak:
    output:
        contract.table_file("peak"),
    params:
        cfg=BENCH_CONFIG_JSON,
        explicit=hw_tag_flag,
    log:
        "logs/{hw}/bench/peak.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: BENCH_THREADS
    resources:
        **res("probe", gpu=True),
    shell:
        "bpttbench bench peak --config-json {params.cfg:q} --hw-tag {wildcards.hw}"
        " {params.explicit} --out {output} > {log} 2>&1"


# One job per op (or one for all): every size and variant, checked against float64, timed.
rule bench_op:
    output:
        temp(BENCH_PART_FILE),
    params:
        cfg=BENCH_CONFIG_JSON,
        explicit=hw_tag_flag,
        ops=lambda wc: part_ops(BENCH_PARTS, wc.part),
    wildcard_constraints:
        part=r"[A-Za-z0-9_]+",
    log:
        "logs/{hw}/bench/{part}.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: BENCH_THREADS
    resources:
        **res("compute", gpu=True),
    shell:
        "bpttbench bench op {params.ops} --config-json {params.cfg:q}"
        " --hw-tag {wildcards.hw} {params.explicit} --out {output} > {log} 2>&1"


rule bench_collect:
    input:
        parts=lambda wc: expand(
            BENCH_PART_FILE, hw=wc.hw, part=BENCH_PARTS
        ),
        # ancient: beside the temp() parts, a committed table or repo file that a fresh clone
        # happens to date newer must not rerun this job (it would recompute the parts).
        peak=ancient(contract.table_file("peak")),
        targets=ancient(BENCH_TARGETS),
    output:
        **BENCH_TABLES,
    log:
        "logs/{hw}/bench/collect.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("small"),
    shell:
        "bpttbench bench collect --peak {input.peak} --targets {input.targets}"
        " --out results/{wildcards.hw}/tables {input.parts} > {log} 2>&1"


rule bench_figures:
    input:
        bench=BENCH_TABLES["bench"],
        peak=contract.table_file("peak"),
    output:
        **contract.figure_outputs("bench", report),
    log:
        "logs/{hw}/bench/figures.log",
    conda:
        "../envs/bpttbench.yaml"
    threads: 1
    resources:
        **res("figures"),
    shell:
        "bpttbench bench figures --tables results/{wildcards.hw}/tables"
        " --out results/{wildcards.hw}/figures > {log} 2>&1"
