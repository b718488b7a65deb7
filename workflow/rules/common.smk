# Helpers shared by the stage files: config validation, the hardware tag, target lists.
import json
import os

from snakemake.utils import validate

from bpttbench.config import ConfigError, block_to_json, blocks_by_id
from bpttbench.config import validate as validate_config
from bpttbench import cluster, gpus
from bpttbench.hardware import hardware_tag

# Our validator first: it names the bad key and the allowed values. Then Snakemake's,
# the standard one, against the same schema.
try:
    config.update(validate_config(config))
except ConfigError as err:
    raise WorkflowError(str(err)) from None
validate(config, "../schemas/config.schema.yaml")

HW = hardware_tag(config)
BLOCKS = blocks_by_id(config)
HW_TAG_IS_EXPLICIT = config['hardware_tag'] != 'auto'
# The config a result set records (the manifest job's params), less `compare`; which sets to
# compare is not part of a measurement, and a params change would rerun the whole sweep.
CONFIG_JSON = json.dumps({k: v for k, v in config.items() if k != "compare"}, sort_keys=True)
# Absolute, so the workflow also runs with --directory elsewhere (tests do).
REPORT_CAPTIONS = os.path.join(workflow.basedir, "workflow", "report")

# GPUs of a local run (none on a cluster: nodes is set there, and SLURM assigns GPUs; none for
# a CPU config). Each GPU job asks for its estimated peak (gpu_mem_mb) and one gpu_jobs slot,
# and starts through `bpttbench gpu-run`, which gives it a GPU of its own (bpttbench.gpus).
LOCAL_GPUS = gpus.local_gpus(config, local=workflow.nodes is None and workflow.is_main_process)
for _name, _value in gpus.global_resources(LOCAL_GPUS).items():
    if _name not in workflow.global_resources:  # the user's --resources win
        workflow.register_resource(_name, _value)


def gpu_job(peak_bytes):
    """(resources, shell prefix) of a GPU job of estimated peak ``peak_bytes``."""
    return gpus.job_resources(LOCAL_GPUS, peak_bytes), gpus.gpu_run_prefix(LOCAL_GPUS, peak_bytes)


def job_gpu_resource(jobs, wildcard, name):
    """Resource ``name`` of the job named by ``wildcard`` in ``jobs`` (id -> gpu_job(...))."""
    return lambda wc: jobs.get(getattr(wc, wildcard), ({}, ""))[0].get(name, 0)


def job_gpu_prefix(jobs, wildcard):
    return lambda wc: jobs.get(getattr(wc, wildcard), ({}, ""))[1]


wildcard_constraints:
    hw=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    block=r"[A-Za-z0-9._-]+",


def hw_tag_flag(wildcards):
    """--hw-tag-is-explicit for this config's own set only: a compute job for any other set
    (say one whose provenance says it is outdated) is refused by the CLI, never run into it."""
    return "--hw-tag-is-explicit" if HW_TAG_IS_EXPLICIT and wildcards.hw == HW else ""


def block_spec(wildcards):
    if wildcards.block not in BLOCKS:
        raise WorkflowError(
            f"block {wildcards.block} is not in the current config's sweep; "
            f"blocks: {', '.join(BLOCKS)}"
        )
    return block_to_json(BLOCKS[wildcards.block])


def gradient_flow_block_files(wildcards):
    return expand(
        "results/{hw}/cells/gradient_flow/{block}", hw=wildcards.hw, block=sorted(BLOCKS)
    )


def manifest_block_files(wildcards):
    """This config's own set: the sweep's block records (a rerun of them reruns the manifest);
    another machine's set: nothing (its manifest is never rewritten here)."""
    return gradient_flow_block_files(wildcards) if wildcards.hw == HW else []


# Each stage file appends the results/<hw>/... paths (with {hw}) the report embeds.
REPORT_INPUTS = []


def report_inputs(wildcards):
    paths = [p.format(hw=wildcards.hw) for p in REPORT_INPUTS]
    if wildcards.hw != HW:
        # Another machine's (committed) set: embed what it holds, compute nothing for it
        # (its figures are still redrawn when its tables are newer). docs/reproducibility.md
        paths = [p for p in paths if os.path.exists(p)]
    return paths


def all_targets():
    return [f"results/{HW}/report.html"]


# Kernel validation runs only where the CUDA kernels are used (a CUDA device).
if cluster.uses_gpu(config):
    REPORT_INPUTS.append("results/{hw}/tables/validation.csv")


# One pipeline per result set. Snakemake's lock (.snakemake/locks) is per working directory
# and checked, then written: two runs started at the same instant can both pass it. This
# flock on results/<hw_tag>/ is atomic, holds across working directories, and dies with the
# process that holds it (no stale lock after a kill). --nolock skips both. docs/reproducibility.md
onstart:
    if getattr(getattr(workflow, "execution_settings", None), "lock", True):
        from bpttbench.io import hold_result_lock

        try:
            hold_result_lock(f"results/{HW}")
        except RuntimeError as err:
            raise WorkflowError(f"Refused: {err}") from None
