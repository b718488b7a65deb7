# Stage: every custom CUDA kernel against the float64 reference (only where a GPU is used).


rule validate_kernels:
    output:
        contract.table_file("validation"),
    log:
        "logs/{hw}/validate_kernels.log",
    conda:
        "../envs/bpttbench.yaml"
    resources:
        **res("kernels", gpu=True),
    shell:
        "bpttbench validation kernels --out {output} > {log} 2>&1"
