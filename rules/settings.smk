# The settings layer, included first: blkassist.workflow_settings validates the config,
# runs every section's cross-key checks (before any job) and builds what the rules read.
# Nothing here writes into `config` beyond the schema's defaults (the jobs' scripts read
# their sections from it). Every other rule file reads the names defined here.
from pathlib import Path

from blkassist.flux.single_file import check_flux_model
from blkassist.runlock import clear_stale_locks
from blkassist.workflow_settings import load_workflow_settings

SETTINGS = load_workflow_settings(
    config, Path(workflow.basedir) / "config" / "schema.yaml", workflow.basedir
)

if workflow.is_main_process:
    # A run killed by SIGKILL leaves Snakemake's locks behind; rerunning should just resume.
    for stale in clear_stale_locks():
        print(f"Removed stale Snakemake lock {stale} (its run is no longer alive).")
    # Missing or wrong model files are named now, from their headers, before any job runs.
    for _model in sorted(SETTINGS.flux_models()):
        check_flux_model(_model)


MURALS = SETTINGS.murals
REFINE = SETTINGS.refine
MAX_SOURCE_PIXELS = config["limits"]["max_source_pixels"]
MODELS_DIR = SETTINGS.models_dir

COLLECTIONS = config["corpus"]["collections"]
DATASETS = config["datasets"]
SYNTHETIC_CORPUS = config["corpus"].get("synthetic")
CAPTION_SETTINGS = SETTINGS.captions

ESRGAN_RUNS = config["esrgan"]

CONCEPTOR = config["conceptor"]
CONCEPTS = SETTINGS.concepts  # each with the prompt length its run's LoRA learnt
FLUX_MODEL = SETTINGS.conceptor_model

TEXTURE = config["texture"]
TEXTURE_RUNS = TEXTURE["runs"]
TEXTURE_MODEL = SETTINGS.texture_model
TEXTURE_CAPTIONER = SETTINGS.texture_captioner

STENCIL = config["stencil"]
STENCIL_SETS = STENCIL["datasets"]
STENCIL_RUNS = STENCIL["runs"]
STENCIL_VAE = STENCIL["vae"]
STENCIL_SHAPES = STENCIL_VAE.get("shapes")
STENCIL_FLUX_MODEL = SETTINGS.stencil_model
STENCIL_VAE_SPEC = SETTINGS.stencil_vae_spec
STENCIL_VAE_WEIGHTS = SETTINGS.stencil_vae_weights
# An asset set's `stencil:RUN` LoRA is that run's file, so generation depends on training.
STENCIL_ASSET_SETS = SETTINGS.stencil_assets
COMPOSITIONS = config["compositions"]


def workflow_file(path):
    """A config path that may name a file shipped with the workflow (resources/...)."""
    return SETTINGS.file(path)


def kohya_loras():
    """The kohya / ComfyUI copies of the LoRAs trained here (rules/models.smk)."""
    return SETTINGS.kohya_loras()
