"""The workflow's one settings layer, built once when the Snakefile is parsed, before any
job: the config validated against config/schema.yaml, every section's cross-key checks,
and the values the rules derive from it (settings objects, resolved names and paths).

Validation fills the schema's defaults into the config: the schema is their only source.
Each job's script reads its sections of that validated config as typed objects through
blkassist.job_settings.JobSettings (scheduling knobs included). Nothing else is written
into the config; what the rules resolve (LoRA files, concept lengths, workflow paths)
lives on WorkflowSettings.

Each section's checks live beside its settings, and name the key and the fix:

    murals.NAME                       blkassist.config.check_murals (in validation)
    murals.NAME.refine                blkassist.refine.settings.RefineSettings
    conceptor.concepts                blkassist.flux.recipe.concepts_with_sequence_lengths
    texture.runs                      blkassist.texture.select.check_runs
    stencil.collections, .datasets    blkassist.stencil.dataset.check_stencil_config
    stencil.runs                      blkassist.stencil_model.settings.check_stencil_runs
    stencil.assets.NAME.loras         blkassist.stencil_model.settings.asset_sets_with_lora_files

A re-roll's checks need the mural's plan (its path, its source's size): they run when
the plan is made (rules/reroll_common.smk, reroll_plan), still before any job.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from blkassist.config import MuralSettings, load_schema, mural_settings, validate_against
from blkassist.flux.recipe import concepts_with_sequence_lengths
from blkassist.fsutil import workflow_file
from blkassist.refine.settings import RefineSettings, mural_refine_settings
from blkassist.stencil.dataset import check_stencil_config
from blkassist.stencil_model.settings import asset_sets_with_lora_files, check_stencil_runs
from blkassist.texture.select import check_runs as check_texture_runs


@dataclass(frozen=True)
class WorkflowSettings:
    """What the rules read: the validated config (never written) and what derives from it."""

    config: Mapping
    schema: Mapping  # config/schema.yaml, for entries checked later (re-roll files)
    workflow_dir: str
    murals: dict[str, MuralSettings]
    refine: dict[str, RefineSettings]
    concepts: dict  # conceptor.concepts, each max_sequence_length resolved from its run
    stencil_assets: dict  # stencil.assets, each `stencil:RUN` LoRA resolved to its file

    def file(self, path: str) -> str:
        return workflow_file(path, self.workflow_dir)

    @property
    def models_dir(self) -> str:
        return self.config["models"]["dir"]

    def sr_weights(self, model: str) -> str:
        """The weights behind an SR model name: a path, a converted package model or a
        fine-tune run."""
        if model.endswith((".pth", ".safetensors")):
            return model
        if model.startswith("esrgan:"):
            return f"{self.models_dir}/esrgan-{model.removeprefix('esrgan:')}.pth"
        return f"{self.models_dir}/{model}.pth"

    def refine_model(self, mural: str) -> str:
        return self.file(self.refine[mural].model)

    @property
    def captions(self) -> dict:
        """The captions section with its prompt files resolved (the caption jobs' params)."""
        captions = self.config["captions"]
        return {
            **captions,
            "system_prompt": self.file(captions["system_prompt"]),
            "examples": self.file(captions["examples"]),
        }

    @property
    def texture_captioner(self) -> str:
        """What texture captions come from: "embedded", or the served model."""
        captions = self.config["captions"]
        if captions["captioner"] == "embedded":
            return "embedded"
        return f"vllm:{captions['vllm']['model']}"

    @property
    def conceptor_model(self) -> str:
        return self.file(self.config["conceptor"]["model"])

    @property
    def texture_model(self) -> str:
        return self.file(self.config["texture"]["model"])

    @property
    def stencil_model(self) -> str:
        return self.file(self.config["stencil"]["model"])

    @property
    def stencil_vae_spec(self) -> str:
        return self.file(self.config["stencil"]["vae"]["spec"])

    @property
    def stencil_vae_weights(self) -> str:
        """The published transparent VAE, or the one trained here."""
        weights = self.config["stencil"]["vae"]["weights"]
        return weights or f"{self.models_dir}/stencil-transparent-vae.pth"

    def trained_loras(self) -> list[tuple[str, str, dict]]:
        """(kind, run, its settings) of every LoRA or LoKr run trained here."""
        config = self.config
        runs = [("conceptor", name, run) for name, run in config["conceptor"]["runs"].items()]
        runs += [("texture", name, run) for name, run in config["texture"]["runs"].items()]
        runs += [("stencil", name, run) for name, run in config["stencil"]["runs"].items()]
        return runs

    def kohya_loras(self) -> list[str]:
        """The kohya / ComfyUI copies of the LoRAs trained here (rules/models.smk)."""
        return [
            f"{self.models_dir}/{kind}-{name}.kohya.safetensors"
            for kind, name, run in self.trained_loras()
            if run["recipe"]["adapter"] == "lora"
        ]

    def flux_models(self) -> set[str]:
        """The Flux models the configured targets use (random specs, diffusers folders,
        ComfyUI's single files); a mural's only where it is set to path: diffusion (auto
        decides from the source's size, known later)."""
        config, models = self.config, set()
        if config["conceptor"]["runs"] or config["conceptor"]["concepts"]:
            models.add(self.conceptor_model)
        if config["texture"]["runs"]:
            models.add(self.texture_model)
        if config["stencil"]["runs"] or config["stencil"]["assets"]:
            models.add(self.stencil_model)
        return models | {
            self.refine_model(m) for m in self.murals if self.refine[m].path == "diffusion"
        }


def load_workflow_settings(
    config: dict, schema_path: str | os.PathLike, workflow_dir: str | os.PathLike
) -> WorkflowSettings:
    """The one entry point: validate `config` (filling the schema's defaults), run every
    section's cross-key checks, and build the settings the rules read. Raises ConfigError
    naming the key and the fix."""
    schema = load_schema(schema_path)
    validate_against(config, schema, schema_path)
    check_texture_runs(config)
    check_stencil_config(config)
    stencil = config["stencil"]
    check_stencil_runs(stencil, workflow_file(stencil["vae"]["spec"], workflow_dir))
    return WorkflowSettings(
        config=config,
        schema=schema,
        workflow_dir=str(workflow_dir),
        murals={name: mural_settings(config, name) for name in config["murals"]},
        refine={name: mural_refine_settings(config, name) for name in config["murals"]},
        concepts=concepts_with_sequence_lengths(config["conceptor"]),
        stencil_assets=asset_sets_with_lora_files(stencil, config["models"]["dir"]),
    )
