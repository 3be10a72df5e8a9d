"""A mural's refinement settings, its path choice and its list of refinement passes.

Schema defaults are already filled in (config/schema.yaml, `murals.NAME.refine`); this
module only resolves names (LoRA, model), checks what the schema cannot, and plans.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from blkassist.errors import ConfigError
from blkassist.refine.plan import RefinePass

SR_ONLY_LONG_SIDE = 8192  # `path: auto` refines only murals whose long side is larger


@dataclass(frozen=True)
class QaSettings:
    """murals.NAME.refine.qa: when a refined window is judged bad and rendered again."""

    rounds: int
    level: float | None  # a window's level step above this is re-rendered (None: not judged)
    texture: float | None  # a texture ratio below this is re-rendered
    fidelity: float | None  # a new-stroke share above this is re-rendered
    edge_margin: float
    denoise_scale: float  # each round's denoise is the pass's times this, once more per round
    context: int  # pixels of surroundings sampled with a re-rendered window, each side

    @classmethod
    def from_config(cls, values: dict) -> QaSettings:
        return cls(**values)

    @property
    def enabled(self) -> bool:
        return self.rounds > 0 and any(
            v is not None for v in (self.level, self.texture, self.fidelity)
        )


@dataclass(frozen=True)
class RefineSettings:
    SECTION: ClassVar[str] = "murals.NAME.refine"
    mural: str
    path: str  # as configured: sr, diffusion or auto
    model: str
    lora: str | None  # a .safetensors path, or None for the base model
    lora_name: str  # as configured (none, texture:RUN or a path)
    lora_scale: float
    prompt: str
    tile: int
    overlap: int
    passes: tuple[float, ...]
    coherence: float | None
    steps: int
    guidance: float
    seed: int
    anchor_strength: float
    anchor_levels: int
    quantize: bool
    max_sequence_length: int
    tiles_per_job: int
    tiles_per_forward: int
    blocks_per_job: int
    seconds_per_window: float | None  # planning only (the plan's GPU-hours)
    qa: dict  # the QA gate (refine.qa)
    reroll: tuple  # the artist's re-roll entries (refine.reroll)
    reroll_file: str | None

    def __post_init__(self):
        """The cross-key checks of murals.NAME.refine (what the schema cannot say)."""
        key = f"murals.{self.mural}.refine"
        if self.overlap * 2 > self.tile:
            raise ConfigError(
                f"{key}.overlap: {self.overlap} is more than half of tile {self.tile}; "
                "use an overlap of at most tile / 2 (64-128 for 1024-pixel tiles)"
            )

    @property
    def qa_enabled(self) -> bool:
        return bool(self.qa) and QaSettings.from_config(self.qa).enabled

    def pixel_settings(self, stage: RefinePass) -> dict:
        """Everything that defines a pass's pixels (rule params; batching left out)."""
        return {
            "denoise": self.coherence if stage.coherence else self.passes[stage.number - 1],
            "model": self.model,
            "lora": self.lora_name,
            "lora_scale": self.lora_scale,
            "prompt": self.prompt,
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
            "anchor_strength": self.anchor_strength,
            "anchor_levels": self.anchor_levels,
            "quantize": self.quantize,
            "max_sequence_length": self.max_sequence_length,
            **stage.geometry(),
        }


def lora_file(name: str, models_dir: str) -> str | None:
    """none -> None; texture:RUN -> the texture run's export; otherwise the path itself."""
    if name == "none":
        return None
    if name.startswith("texture:"):
        return f"{models_dir}/texture-{name.removeprefix('texture:')}.safetensors"
    return name


def refine_settings(
    config: Mapping, name: str, models_dir: str, default_model: str
) -> RefineSettings:
    mural = config["murals"][name]
    refine = mural["refine"]
    coherence = refine["coherence"]
    anchor = refine["anchor"]
    return RefineSettings(
        mural=name,
        path=mural["path"],
        model=refine["model"] or default_model,
        lora=lora_file(refine["lora"], models_dir),
        lora_name=refine["lora"],
        lora_scale=refine["lora_scale"],
        prompt=refine["prompt"],
        tile=refine["tile"],
        overlap=refine["overlap"],
        passes=tuple(p["denoise"] for p in refine["passes"]),
        coherence=None if coherence is None else coherence["denoise"],
        steps=refine["steps"],
        guidance=refine["guidance"],
        seed=refine["seed"],
        anchor_strength=anchor["strength"],
        anchor_levels=anchor["levels"],
        quantize=refine["quantize"],
        max_sequence_length=refine["max_sequence_length"],
        tiles_per_job=refine["tiles_per_job"],
        tiles_per_forward=refine["tiles_per_forward"],
        blocks_per_job=refine["blocks_per_job"],
        seconds_per_window=refine["seconds_per_window"],
        qa=dict(refine["qa"]),
        reroll=tuple(refine["reroll"]),
        reroll_file=refine["reroll_file"],
    )


def choose_path(
    configured: str, final_width: int, final_height: int, model: str = ""
) -> tuple[str, str]:
    """("sr" or "diffusion", why). `auto` refines murals longer than 8192 px, but never with
    a model that declares itself a demo model (blkassist.demo.declares_demo): it would paint
    over a studio's mural."""
    from blkassist.demo import declares_demo

    long_side = max(final_width, final_height)
    if configured != "auto":
        return configured, f"path: {configured} set in the config"
    if long_side <= SR_ONLY_LONG_SIDE:
        return "sr", (
            f"path: auto and the long side {long_side} px is at most {SR_ONLY_LONG_SIDE} px"
        )
    if declares_demo(model):
        return "sr", (
            f"path: auto and the long side {long_side} px is above {SR_ONLY_LONG_SIDE} px, "
            # Worded as before the demo declaration: this reason is an assemble_mural param,
            # and any other wording reruns the assembly of every finished mural it names.
            f"but the refinement model {model} is a demo model (random or the small ink "
            "model), not Flux weights: SR alone (set refine.model or conceptor.model to a "
            "Flux.1-dev folder to refine)"
        )
    return "diffusion", (
        f"path: auto and the long side {long_side} px is above {SR_ONLY_LONG_SIDE} px: "
        "SR then Flux refinement"
    )


def mural_refine_settings(config: Mapping, name: str) -> RefineSettings:
    """Mural `name`'s refinement settings as the workflow resolves them: LoRA names under
    models.dir, no refine.model = conceptor.model."""
    return refine_settings(config, name, config["models"]["dir"], config["conceptor"]["model"])


def mural_refine_stages(
    config: Mapping, name: str, sr_outputs: list[tuple[int, int]], final_size, model=None
) -> list[RefinePass]:
    """The refinement passes of mural `name` if its path is diffusion, else none: what a
    job that sees only the config (the mural's check) needs of the workflow's plan.
    `model` is the refinement model's path as the workflow resolved it (a relative path in
    the config may name a folder shipped with the workflow)."""
    return refine_stages(mural_refine_settings(config, name), sr_outputs, final_size, model)


def refine_stages(
    settings: RefineSettings, sr_outputs: list[tuple[int, int]], final_size, model=None
) -> list[RefinePass]:
    """mural_refine_stages from the mural's refinement settings already read."""
    path, _ = choose_path(settings.path, *final_size, model or settings.model)
    return plan_stages(sr_outputs, settings) if path == "diffusion" else []


def plan_stages(sr_outputs: list[tuple[int, int]], settings: RefineSettings) -> list[RefinePass]:
    """Every refinement pass, in order: after each SR step (whose output sizes are given)
    one pass per `passes` entry, then the coherence pass after the last step."""
    stages = []
    for step, (width, height) in enumerate(sr_outputs, start=1):
        count = len(settings.passes)
        last = step == len(sr_outputs)
        numbers = count + (1 if last and settings.coherence is not None else 0)
        for number in range(1, numbers + 1):
            stages.append(
                RefinePass(
                    step=step,
                    number=number,
                    coherence=number > count,
                    width=width,
                    height=height,
                    tile=settings.tile,
                    overlap=settings.overlap,
                    tiles_per_job=settings.tiles_per_job,
                    blocks_per_job=settings.blocks_per_job,
                )
            )
    return stages
