# Helpers shared by the stage files: config validation, the hardware tag, the jobs, resources.
# Only the torch-free planning layer is imported (bpttbench.planning); torch runs in jobs.
import os

from snakemake.utils import validate

from bpttbench import contract
from bpttbench.planning.workflow import (
    ConfigError,
    Plan,
    RuleResources,
    config_json,
    global_resources,
    hardware_tag,
    local_gpus,
    read_config_file,
    validate_config,
)

# Snakemake's YAML loader keeps the last of two equal keys (a second gradient_flow: section
# would silently replace the first): read each config file again with ours, which refuses a
# repeated key and names it with both lines.
for _configfile in workflow.configfiles:
    try:
        read_config_file(_configfile)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None

# Our validator first: it names the bad key and the allowed values. Then Snakemake's,
# the standard one, against the same schema.
try:
    config.update(validate_config(config))
except ConfigError as err:
    raise WorkflowError(str(err)) from None
validate(config, "../schemas/config.schema.yaml")

try:
    HW = hardware_tag(config)  # the result set: results/<HW>/
    PLAN = Plan(config)  # every stage's jobs
except (ConfigError, ValueError, RuntimeError) as err:
    raise WorkflowError(str(err)) from None
BLOCKS = PLAN.blocks
HW_TAG_IS_EXPLICIT = config['hardware_tag'] != 'auto'
# The config a result set records (the manifest job's params), less `compare`.
CONFIG_JSON = config_json(config)
# Absolute, so the workflow also runs with --directory elsewhere (tests do).
REPORT_CAPTIONS = os.path.join(workflow.basedir, "workflow", "report")

# GPUs of a local run (none on a cluster: nodes is set there, and SLURM assigns GPUs; none for
# a CPU config). Each GPU job asks for its estimated peak (gpu_mem_mb) and one gpu_jobs slot,
# and starts through `bpttbench gpus run`, which gives it a GPU of its own (bpttbench.gpus).
LOCAL_GPUS = local_gpus(config, local=workflow.nodes is None and workflow.is_main_process)
for _name, _value in global_resources(LOCAL_GPUS).items():
    if _name not in workflow.global_resources:  # the user's --resources win
        workflow.register_resource(_name, _value)

# Every rule's resources: `resources: **res(kind, gpu=...)` (bpttbench.planning.resources):
# the job class's memory and wall time (growing with each retry), and for a job on the
# config's device `gpu: 1` when it is CUDA; gpu={wildcard: {job: peak bytes}} adds each job's
# share of the local GPUs, and gpu_run(...) the prefix that starts it on one.
RESOURCES = RuleResources(config, LOCAL_GPUS)
res, gpu_run = RESOURCES.res, RESOURCES.gpu_run
USES_GPU = RESOURCES.uses_gpu


wildcard_constraints:
    hw=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    block=r"[A-Za-z0-9._-]+",


def hw_tag_flag(wildcards):
    """--hw-tag-is-explicit for this config's own set only: a compute job for any other set
    (say one whose provenance says it is outdated) is refused by the CLI, never run into it."""
    return "--hw-tag-is-explicit" if HW_TAG_IS_EXPLICIT and wildcards.hw == HW else ""


def block_spec(wildcards):
    try:
        return PLAN.block_spec(wildcards.block)
    except ValueError as err:
        raise WorkflowError(str(err)) from None


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
if USES_GPU:
    REPORT_INPUTS.append(contract.table_file("validation"))


# One pipeline per result set. Snakemake's lock (.snakemake/locks) is per working directory
# and checked, then written: two runs started at the same instant can both pass it. This
# flock on results/<hw_tag>/ is atomic, holds across working directories, and dies with the
# process that holds it (no stale lock after a kill). --nolock skips both. docs/reproducibility.md
onstart:
    if getattr(getattr(workflow, "execution_settings", None), "lock", True):
        from bpttbench.planning.workflow import hold_result_lock

        try:
            hold_result_lock(f"results/{HW}")
        except RuntimeError as err:
            raise WorkflowError(f"Refused: {err}") from None
