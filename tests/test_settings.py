"""The schema is the only source of defaults: every settings object of the package has no
default of its own and is built from a schema-validated config section."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import pkgutil

import pytest
import yaml

import blkassist
from blkassist import licences
from blkassist.config import (
    SCHEMA,
    MuralSettings,
    mural_settings,
    schema_settings,
    section_with_defaults,
    settings_from,
    validate_config,
)
from blkassist.errors import ConfigError
from blkassist.gpu_memory import GpuSettings
from blkassist.job_settings import (
    CanvasSettings,
    CaptionSettings,
    JobSettings,
    StencilRunSettings,
    TextureRunSettings,
)
from blkassist.progress import ProgressSettings
from blkassist.refine.settings import RefineSettings, mural_refine_settings
from blkassist.sr.degrade import DegradationSettings
from blkassist.sr.train.run import train_settings
from blkassist.sr.train.trainer import TrainSettings
from blkassist.stencil_model.train_vae import VaeTraining


def settings_classes() -> list[type]:
    """Every dataclass in the package that declares the config section it reads (SECTION)."""
    found = set()
    for module in pkgutil.walk_packages(blkassist.__path__, "blkassist."):
        for value in vars(importlib.import_module(module.name)).values():
            if dataclasses.is_dataclass(value) and isinstance(getattr(value, "SECTION", None), str):
                found.add(value)
    return sorted(found, key=lambda cls: cls.__qualname__)


CONFIG = {
    "murals": {"m": {"source": "a.png"}, "sized": {"source": "a.png", "target_long_side": 900}},
    "esrgan": {"run": {"collections": ["scans"]}},
    "gpu": {"devices": [{"id": 0, "memory_gib": 48}, {"id": "1", "memory_gib": 24}]},
    "texture": {"runs": {"t": {"collections": ["scans"]}}},
    "stencil": {"runs": {"s": {"dataset": "ink"}}},
}

# What each job reads (blkassist.job_settings): the section object as JobSettings builds it
# from the validated config, and the section it reads.
JOB_SECTIONS = {
    GpuSettings: (lambda job: job.gpu, lambda config: config["gpu"]),
    ProgressSettings: (lambda job: job.progress, lambda config: config["progress"]),
    CanvasSettings: (lambda job: job.canvases, lambda config: config["canvases"]),
    CaptionSettings: (lambda job: job.captions, lambda config: config["captions"]),
    TextureRunSettings: (
        lambda job: job.texture_run("t"),
        lambda config: config["texture"]["runs"]["t"],
    ),
    StencilRunSettings: (
        lambda job: job.stencil_run("s"),
        lambda config: config["stencil"]["runs"]["s"],
    ),
}


# Fields that hold what a value resolves to, not the value: a refinement's model (null: the
# config's Flux) and LoRA (a name: its file); a run's degradation overrides (its identity),
# which DegradationSettings fills.
RESOLVED = {RefineSettings: {"model", "lora"}, TrainSettings: {"degradation"}}
# Fields read from a nested mapping: where in the section their value is.
NESTED = {
    RefineSettings: {
        "passes": lambda refine: [stage["denoise"] for stage in refine["passes"]],
        "coherence": lambda refine: refine["coherence"]["denoise"],
    }
}


def built_from_config(cls: type):
    """The object the workflow builds from a config that sets nothing it need not, and the
    validated section it was read from."""
    config = validate_config(yaml.safe_load(yaml.safe_dump(CONFIG)), SCHEMA)
    if cls in JOB_SECTIONS:
        built, section = JOB_SECTIONS[cls]
        return built(JobSettings(config)), section(config)
    if cls is MuralSettings:
        return mural_settings(config, "m"), config["murals"]["m"]
    if cls is RefineSettings:
        return mural_refine_settings(config, "m"), config["murals"]["m"]["refine"]
    if cls is TrainSettings:
        run = config["esrgan"]["run"]
        return train_settings(run), {**run, **run["loss"]}
    if cls is DegradationSettings:
        return DegradationSettings.from_config(None), section_with_defaults({}, "degradation")
    return schema_settings(cls), section_with_defaults({}, cls.SECTION)


def test_the_settings_classes_are_found():
    expected = {MuralSettings, RefineSettings, TrainSettings, DegradationSettings, VaeTraining}
    assert {*expected, *JOB_SECTIONS} <= set(settings_classes())


@pytest.mark.parametrize("cls", settings_classes(), ids=lambda cls: cls.__qualname__)
def test_settings_have_no_defaults_and_take_every_value_from_the_schema(cls):
    defaults = [
        field.name
        for field in dataclasses.fields(cls)
        if field.default is not dataclasses.MISSING
        or field.default_factory is not dataclasses.MISSING
    ]
    assert defaults == [], f"{cls.__qualname__} restates schema defaults: {defaults}"
    built, section = built_from_config(cls)
    shared = [f.name for f in dataclasses.fields(cls) if f.name in section]
    assert len(shared) >= len(dataclasses.fields(cls)) // 2, shared  # the check has teeth
    for name in set(shared) - RESOLVED.get(cls, set()):
        value = getattr(built, name)
        nested = NESTED.get(cls, {}).get(name)
        expected = nested(section) if nested else section[name]
        assert (list(value) if isinstance(value, tuple) else value) == expected, name


def test_a_jobs_settings_are_the_validated_configs_values():
    """JobSettings, what every script reads, holds the validated config's values: the
    mural's and its refinement's scheduling knobs, the devices' memory, the licences."""
    config = validate_config(yaml.safe_load(yaml.safe_dump(CONFIG)), SCHEMA)
    job = JobSettings(config)
    assert job.mural("m") == mural_settings(config, "m")
    assert job.refine("m") == mural_refine_settings(config, "m")
    assert job.refine("m").tiles_per_forward == config["murals"]["m"]["refine"]["tiles_per_forward"]
    assert job.gpu.memory == {"0": 48 * 2**30, "1": 24 * 2**30}
    assert job.captions.block() == config["captions"]
    curriculum = config["stencil"]["runs"]["s"]["curriculum"]
    assert job.stencil_run("s").curriculum_stages().pairs_from == curriculum["pairs_from"]
    assert job.licences.transparent_vae() == licences.transparent_vae(config)
    assert job.licences.mural("m", True) == licences.mural(config, "m", True)
    assert job.licences.trained_lora("texture", "t") == licences.trained_lora(
        config, "texture", "t"
    )


@pytest.mark.parametrize("cls", list(JOB_SECTIONS), ids=lambda cls: cls.__qualname__)
def test_a_jobs_section_missing_a_key_is_an_error_not_a_default(cls):
    """No section object falls back on a value of its own: a key the schema did not fill
    (a config that skipped validation) is a KeyError."""
    built, section = JOB_SECTIONS[cls]
    config = validate_config(yaml.safe_load(yaml.safe_dump(CONFIG)), SCHEMA)
    for key in list(section(config)):
        broken = copy.deepcopy(config)
        del section(broken)[key]
        with pytest.raises(KeyError, match=key):
            built(JobSettings(broken))


def test_the_stale_python_defaults_are_gone():
    """Values the issue found restated in Python and drifted from the schema."""
    schema = yaml.safe_load(SCHEMA.read_text())
    train = schema["properties"]["stencil"]["properties"]["vae"]["properties"]["train"]
    vae = schema_settings(VaeTraining)
    for name in ("steps", "batch_size", "lr"):
        assert getattr(vae, name) == train["properties"][name]["default"]
    assert (vae.steps, vae.batch_size, vae.lr) == (400, 8, 0.003)
    assets = section_with_defaults({"prompts": ["a cube"]}, "stencil.assets.set")
    assert assets["steps"] == 50


def test_a_murals_default_scale_applies_only_without_a_target_size():
    config = validate_config(yaml.safe_load(yaml.safe_dump(CONFIG)), SCHEMA)
    assert mural_settings(config, "m").scale == 4
    sized = mural_settings(config, "sized")
    assert (sized.scale, sized.target_long_side) == (None, 900)
    both = {"murals": {"m": {"source": "a.png", "scale": 2, "target_long_side": 900}}}
    with pytest.raises(ConfigError, match=r"murals\.m: give either scale or target_long_side"):
        validate_config(both, SCHEMA)


def test_a_partial_section_is_validated_and_filled_with_errors_by_key():
    filled = section_with_defaults({"steps": 7, "lr": 0.01}, "stencil.vae.train")
    assert filled["steps"] == 7 and filled["batch_size"] == 8  # given, then the schema's
    with pytest.raises(ConfigError, match=r"stencil\.vae\.train\.steps: 0 is less than"):
        section_with_defaults({"steps": 0}, "stencil.vae.train")
    with pytest.raises(ConfigError, match=r"stencil\.vae\.train: .*'stepz' was unexpected"):
        section_with_defaults({"stepz": 1}, "stencil.vae.train")
    with pytest.raises(ConfigError, match=r"stencil\.vea: the schema has no such section"):
        section_with_defaults({}, "stencil.vea")
    with pytest.raises(ConfigError, match=r"esrgan\.r\.degradation: unknown .*'blurr'"):
        DegradationSettings.from_config({"blurr": 1}, "esrgan.r.degradation")
    with pytest.raises(ConfigError, match=r"esrgan\.r\.degradation\.sinc_prob: 2 is greater"):
        DegradationSettings.from_config({"sinc_prob": 2}, "esrgan.r.degradation")
    with pytest.raises(ConfigError, match=r"esrgan\.r\.degradation: \{'blurr': 1\} is not valid"):
        section_with_defaults({"collections": ["c"], "degradation": {"blurr": 1}}, "esrgan.r")


def test_settings_from_a_section_missing_a_value_names_the_key():
    section = section_with_defaults({}, "stencil.vae.train")
    del section["holdout"]
    with pytest.raises(ConfigError, match=r"stencil\.vae\.train: holdout missing; validate"):
        settings_from(VaeTraining, section, "stencil.vae.train")


def test_python_tuples_are_accepted_and_tuple_fields_stay_tuples():
    degradation = DegradationSettings.from_config({"resize_range": (0.3, 1.5)})
    assert degradation.resize_range == (0.3, 1.5) and degradation.blur_sigma == (0.2, 3.0)
    assert isinstance(degradation.kernel_list, list)  # a list field stays a list
