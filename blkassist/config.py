"""Config validation against config/schema.yaml, with errors that name the dotted key."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from blkassist.errors import ConfigError

DEFAULT_SCALE = 4.0


def load_schema(path: str | Path) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


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
    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(error)}" for error in errors)
        raise ConfigError(
            f"invalid configuration ({len(errors)} problem(s)); fix these keys in your "
            f"--configfile (the schema is {schema_path}):\n{lines}"
        )
    _fill_defaults(config, schema, schema)
    for name, mural in config.get("murals", {}).items():
        if "scale" in mural and "target_long_side" in mural:
            raise ConfigError(f"murals.{name}: give either scale or target_long_side, not both")
    return config


def definition_with_defaults(instance: dict, schema_path: str | Path, name: str, key: str) -> dict:
    """A copy of `instance` validated against the schema's `$defs/NAME`, defaults filled
    (a config section on its own: tests, benchmarks, tools). Errors name `key`."""
    root = load_schema(schema_path)
    if name not in root.get("$defs", {}):
        raise ConfigError(f"{key}: {schema_path} has no $defs/{name}")
    schema = {"$defs": root["$defs"], "$ref": f"#/$defs/{name}"}
    instance = copy.deepcopy(instance)
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


@dataclass(frozen=True)
class MuralSettings:
    """One mural's validated settings (schema defaults applied)."""

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
    seconds_per_tile: float | None = None

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


def mural_settings(config: Mapping, name: str) -> MuralSettings:
    mural = dict(config["murals"][name])
    if "scale" not in mural and "target_long_side" not in mural:
        mural["scale"] = DEFAULT_SCALE
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
