"""What a job's script reads from the validated config: one accessor, `JobSettings`, built
once from `snakemake.config`, whose sections are typed, frozen objects read by key.

The workflow validated the config against config/schema.yaml when it was parsed (the
settings layer, blkassist.workflow_settings), which filled every default: the schema is
the only source of defaults, so these objects have none of their own and a missing key is
a KeyError, never a silent default. A job builds only the sections it reads; nothing is
validated again here, and importing this module imports no deep-learning library, zarr
or scipy (jobs that do not need torch must not pay for it).

Scheduling knobs (tiles_per_forward, lock dirs, devices, batch sizes) are read here, in
the job, never passed as rule params: params are Snakemake's rerun triggers, and a
scheduling change must never redo finished work.

    section                  object                                       accessor
    gpu                      blkassist.gpu_memory.GpuSettings             .gpu
    progress                 blkassist.progress.ProgressSettings          .progress
    canvases                 CanvasSettings                               .canvases
    captions                 CaptionSettings                              .captions
    murals.NAME              blkassist.config.MuralSettings               .mural(NAME)
    murals.NAME.refine       blkassist.refine.settings.RefineSettings     .refine(NAME)
    texture.runs.RUN         TextureRunSettings                           .texture_run(RUN)
    stencil.runs.RUN         StencilRunSettings                           .stencil_run(RUN)
    licences (and models)    Licences (blkassist.licences, bound)         .licences
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import ClassVar

from blkassist import licences as _licences
from blkassist.config import MuralSettings, mural_settings
from blkassist.gpu_memory import GpuSettings
from blkassist.progress import ProgressSettings
from blkassist.refine.settings import RefineSettings, mural_refine_settings
from blkassist.stencil_model.settings import Curriculum


@dataclass(frozen=True)
class CanvasSettings:
    """The validated `canvases` section."""

    SECTION: ClassVar[str] = "canvases"

    temporary: bool  # the murals' intermediate canvases are temp()

    @classmethod
    def from_config(cls, canvases: Mapping) -> CanvasSettings:
        return cls(temporary=canvases["temporary"])


@dataclass(frozen=True)
class CaptionSettings:
    """The validated `captions` section: the captioner, its prompt files (as configured)
    and the vLLM server's settings."""

    SECTION: ClassVar[str] = "captions"

    captioner: str  # embedded or vllm
    system_prompt: str
    examples: str
    vllm: Mapping

    @classmethod
    def from_config(cls, captions: Mapping) -> CaptionSettings:
        return cls(
            captioner=captions["captioner"],
            system_prompt=captions["system_prompt"],
            examples=captions["examples"],
            vllm=dict(captions["vllm"]),
        )

    def block(self) -> dict:
        """The section as the captioning functions take it (blkassist.captions.run)."""
        return asdict(self)


@dataclass(frozen=True)
class TextureRunSettings:
    """One validated `texture.runs.RUN` entry."""

    SECTION: ClassVar[str] = "texture.runs.NAME"

    name: str
    collections: tuple[str, ...]
    dataset: Mapping  # the crop selection (texture.select)
    training_set: str | None
    chosen_step: int | None
    recipe: Mapping  # the Flux training recipe (blkassist.flux.train)

    @classmethod
    def from_config(cls, config: Mapping, run: str) -> TextureRunSettings:
        settings = config["texture"]["runs"][run]
        return cls(
            name=run,
            collections=tuple(settings["collections"]),
            dataset=dict(settings["dataset"]),
            training_set=settings["training_set"],
            chosen_step=settings["chosen_step"],
            recipe=dict(settings["recipe"]),
        )

    @property
    def key(self) -> str:
        return f"texture.runs.{self.name}"


@dataclass(frozen=True)
class StencilRunSettings:
    """One validated `stencil.runs.RUN` entry."""

    SECTION: ClassVar[str] = "stencil.runs.NAME"

    name: str
    dataset: str
    chosen_step: int | None
    curriculum: Mapping
    recipe: Mapping  # the Flux training recipe (blkassist.flux.train)

    @classmethod
    def from_config(cls, config: Mapping, run: str) -> StencilRunSettings:
        settings = config["stencil"]["runs"][run]
        return cls(
            name=run,
            dataset=settings["dataset"],
            chosen_step=settings["chosen_step"],
            curriculum=dict(settings["curriculum"]),
            recipe=dict(settings["recipe"]),
        )

    @property
    def key(self) -> str:
        return f"stencil.runs.{self.name}"

    def curriculum_stages(self) -> Curriculum:
        """The curriculum, its stage order and shares checked against the recipe's steps."""
        return Curriculum.from_config(
            dict(self.curriculum), self.recipe["steps"], f"{self.key}.curriculum"
        )


@dataclass(frozen=True)
class Licences:
    """The licence records of what a job makes: blkassist.licences, bound to the config
    (the records read `licences` and the sections of the models they name)."""

    config: Mapping

    def mural(self, name: str, diffusion: bool) -> list[dict]:
        return _licences.mural(self.config, name, diffusion)

    def concept(self, name: str) -> list[dict]:
        return _licences.concept(self.config, name)

    def stencil_assets(self, name: str) -> list[dict]:
        return _licences.stencil_assets(self.config, name)

    def trained_lora(self, kind: str, run: str) -> dict:
        return _licences.trained_lora(self.config, kind, run)

    def sr_model(self, model: str) -> dict | None:
        return _licences.sr_model(self.config, model)

    def transparent_vae(self) -> dict:
        return _licences.transparent_vae(self.config)


@dataclass(frozen=True)
class JobSettings:
    """A job's sections of the validated config (`snakemake.config`), each built when read."""

    config: Mapping

    @property
    def gpu(self) -> GpuSettings:
        return GpuSettings.from_config(self.config["gpu"])

    @property
    def progress(self) -> ProgressSettings:
        return ProgressSettings.from_config(self.config["progress"])

    @property
    def canvases(self) -> CanvasSettings:
        return CanvasSettings.from_config(self.config["canvases"])

    @property
    def captions(self) -> CaptionSettings:
        return CaptionSettings.from_config(self.config["captions"])

    def mural(self, name: str) -> MuralSettings:
        return mural_settings(self.config, name)

    def refine(self, mural: str) -> RefineSettings:
        return mural_refine_settings(self.config, mural)

    def texture_run(self, run: str) -> TextureRunSettings:
        return TextureRunSettings.from_config(self.config, run)

    def stencil_run(self, run: str) -> StencilRunSettings:
        return StencilRunSettings.from_config(self.config, run)

    @property
    def licences(self) -> Licences:
        return Licences(self.config)
