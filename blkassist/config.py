"""Config validation against config/schema.yaml, with errors that name the dotted key."""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import jsonschema
import yaml

from blkassist.errors import ConfigError

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"


def load_schema(path: str | Path) -> dict:
    # libyaml's loader reads the 1,500-line schema in 14 ms (pure Python: 100 ms); every
    # Snakemake start reads it.
    with open(path) as handle:
        return yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _dotted(path) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        return f"{where}: {error.message}; allowed keys: {', '.join(allowed)}"
    if error.validator == "anyOf" and error.schema.get("description"):
        return f"{where}: {error.instance!r} is not valid: {error.schema['description'].strip()}"
    return f"{where}: {error.message}"


def _fill_defaults(instance: Any, schema: Mapping, root: Mapping) -> None:
    """Insert schema defaults into `instance` in place, following $ref and maps."""
    if "$ref" in schema:
        ref = schema["$ref"].removeprefix("#/").split("/")
        target = root
        for part in ref:
            target = target[part]
        schema = target
    if isinstance(instance, list) and isinstance(schema.get("items"), Mapping):
        for item in instance:  # defaults of list entries (e.g. composition elements)
            _fill_defaults(item, schema["items"], root)
    if not isinstance(instance, dict):
        return
    for part in schema.get("allOf", ()):  # earlier parts' defaults win (recipe over base)
        _fill_defaults(instance, part, root)
    if "then" in schema and jsonschema.Draft202012Validator(schema.get("if", True)).is_valid(
        instance
    ):  # a conditional default (a mural's scale where no target_long_side is given)
        _fill_defaults(instance, schema["then"], root)
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra, root)


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Validate `config` in place (filling defaults); raise ConfigError listing every problem."""
    return validate_against(config, load_schema(schema_path), schema_path)


def validate_against(config: dict, schema: Mapping, schema_path: str | Path) -> dict:
    """validate_config with the schema already read from `schema_path` (named in errors)."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(error)}" for error in errors)
        raise ConfigError(
            f"invalid configuration ({len(errors)} problem(s)); fix these keys in your "
            f"--configfile (the schema is {schema_path}):\n{lines}"
        )
    _fill_defaults(config, schema, schema)
    check_murals(config)
    return config


def definition_with_defaults(instance: dict, schema_path: str | Path, name: str, key: str) -> dict:
    """A copy of `instance` validated against the schema's `$defs/NAME`, defaults filled
    (a config section on its own: tests, benchmarks, tools). Errors name `key`."""
    return section_with_defaults(instance, key, schema_path, section=name)


def _section_schema(root: Mapping, key: str) -> dict:
    """The schema of the config section at dotted `key` (a `$defs` name works too):
    follows properties, maps (additionalProperties) and $ref."""
    if key in root.get("$defs", {}):
        return root["$defs"][key]
    schema: Mapping = root
    for part in key.split("."):
        while "$ref" in schema:
            schema = _section_schema(root, schema["$ref"].removeprefix("#/$defs/"))
        if part in schema.get("properties", {}):
            schema = schema["properties"][part]
        elif isinstance(schema.get("additionalProperties"), Mapping):
            schema = schema["additionalProperties"]
        else:
            raise ConfigError(f"{key}: the schema has no such section (at {part!r})")
    return dict(schema)


def section_with_defaults(
    instance: Mapping | None, key: str, schema_path: str | Path = SCHEMA, section: str = ""
) -> dict:
    """A copy of `instance` validated as the config section at dotted `key` (e.g.
    "stencil.vae.train", "esrgan.demo", "murals.NAME"), defaults filled: what the workflow
    would hold there. For settings built outside a workflow (tests, benchmarks, tools), so
    their values come from the schema too. `section` names the schema's section where it
    differs from `key` (a `$defs` name). Errors name `key`."""
    root = load_schema(schema_path)
    # The root's $defs win over a section's own: every $ref is written from the root.
    schema = {**_section_schema(root, section or key), "$defs": root.get("$defs", {})}
    instance = _as_yaml(dict(instance or {}))
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(instance))
    if errors:
        problems = (
            f"{key}{'.' if error.absolute_path else ''}"
            + _describe(error).removeprefix("(top level)")
            for error in errors
        )
        raise ConfigError("; ".join(problems))
    _fill_defaults(instance, schema, schema)
    return instance


Settings = TypeVar("Settings")


def _as_yaml(value):
    """A deep copy as YAML would give it: tuples (Python callers' habit) become lists."""
    if isinstance(value, Mapping):
        return {k: _as_yaml(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_as_yaml(v) for v in value]
    return copy.deepcopy(value)


def _as_field_type(value, annotation):
    """Lists from YAML become tuples where the field is a tuple (frozen, hashable)."""
    hint = annotation if not isinstance(annotation, str) else None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        origin = next((typing.get_origin(a) for a in typing.get_args(hint) if a), None)
    return tuple(value) if origin is tuple and isinstance(value, list) else value


def settings_from(cls: type[Settings], section: Mapping, key: str) -> Settings:
    """A settings dataclass (no defaults of its own) from a validated config section that
    holds each of its fields (and may hold more); a missing one names `key`."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # an annotation only a type checker can resolve: no conversion
        hints = {}
    names = [field.name for field in dataclasses.fields(cls)]
    missing = [name for name in names if name not in section]
    if missing:
        raise ConfigError(
            f"{key}: {', '.join(missing)} missing; validate the config against "
            "config/schema.yaml first (it fills every default)."
        )
    return cls(**{name: _as_field_type(section[name], hints.get(name)) for name in names})


def schema_settings(cls: type[Settings], overrides: Mapping | None = None) -> Settings:
    """A settings dataclass as a config giving `overrides` in its section (`cls.SECTION`)
    would make it: every other value is the schema's default."""
    return settings_from(cls, section_with_defaults(overrides, cls.SECTION), cls.SECTION)


@dataclass(frozen=True)
class MuralSettings:
    """One mural's validated settings (schema defaults applied; none of its own)."""

    SECTION: ClassVar[str] = "murals.NAME"

    name: str
    source: str
    model: str
    scale: float | None
    target_long_side: int | None
    tile: int
    pad: int
    tiles_per_job: int
    tiles_per_forward: int
    precision: str
    compression: str
    jpeg_quality: int
    seconds_per_tile: float | None

    @property
    def is_neural(self) -> bool:
        return self.model != "lanczos"

    def output_settings(self) -> dict:
        """The settings that define the result (pixels and encoding): everything but the
        scheduling knobs and the estimate, which must never make Snakemake redo work."""
        settings = asdict(self)
        for knob in (*SCHEDULING_KNOBS, "seconds_per_tile"):
            settings.pop(knob)
        return settings


# Settings that only schedule work; kept out of every rule's params.
SCHEDULING_KNOBS = ("tiles_per_job", "tiles_per_forward")


def check_murals(config: Mapping) -> None:
    """The cross-key checks of murals.NAME (run by validate_config: the schema's default
    scale applies only without a target_long_side, so both present means both given)."""
    for name, mural in config.get("murals", {}).items():
        if "scale" in mural and "target_long_side" in mural:
            raise ConfigError(f"murals.{name}: give either scale or target_long_side, not both")


def mural_settings(config: Mapping, name: str) -> MuralSettings:
    mural = dict(config["murals"][name])
    return MuralSettings(
        name=name,
        source=mural["source"],
        model=mural["model"],
        scale=mural.get("scale"),
        target_long_side=mural.get("target_long_side"),
        tile=mural["tile"],
        pad=mural["pad"],
        tiles_per_job=mural["tiles_per_job"],
        tiles_per_forward=mural["tiles_per_forward"],
        precision=mural["precision"],
        compression=mural["compression"],
        jpeg_quality=mural["jpeg_quality"],
        seconds_per_tile=mural.get("seconds_per_tile"),
    )
