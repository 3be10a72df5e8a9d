"""Which terms govern a result: the licence of every model it depends on (base model,
LoRAs, Real-ESRGAN, the transparent VAE and layer LoRA), read from the config's `licences`
section (the schema holds the defaults for the known models; `licences.files` sets any
model file's by its path). Models trained here are derivatives: their record names the
model they were trained from and the licences of the artist's collections they learnt from.

Pure functions of the validated config, no torch: the plan line uses them at parse time.
The project records terms; it does not rule on them.
"""

from __future__ import annotations

import re
from pathlib import Path

UNKNOWN = "unknown: set licences.files['{model}'] to its terms"
_TRAINED = re.compile(r"(conceptor|texture|stencil)-([A-Za-z0-9][A-Za-z0-9_-]*)\.safetensors$")


def _record(config: dict, role: str, model: str, kind: str | None) -> dict:
    """The licence of `model`: licences.files[model] if set, else its kind's."""
    settings = config["licences"]
    if str(model) in settings["files"]:
        return {"role": role, "model": str(model), "licence": settings["files"][str(model)],
                "set_by": f"licences.files[{str(model)!r}]"}  # fmt: skip
    if kind is None:
        return {"role": role, "model": str(model), "licence": UNKNOWN.format(model=model),
                "set_by": None}  # fmt: skip
    return {"role": role, "model": str(model), "licence": settings[kind],
            "set_by": f"licences.{kind}"}  # fmt: skip


def flux(config: dict, model: str, role: str = "base model") -> dict:
    from blkassist.demo import declares_demo, random_weights

    # A random spec has no one's weights even where it does not declare itself a demo model.
    is_random = declares_demo(model) or random_weights(model)
    return _record(config, role, model, "random" if is_random else "flux")


def collections(config: dict, names) -> list[dict]:
    """The artist's terms for each collection trained on (corpus.collections)."""
    known = config["corpus"]["collections"]
    return [
        {"collection": n, "artist": known[n]["artist"], "licence": known[n]["licence"]}
        for n in names
        if n in known
    ]


def derived(role: str, model: str, bases: list[dict], data: list[dict]) -> dict:
    """A model trained here: a derivative of `bases`, trained on `data`."""
    terms = "; ".join(f"{b['model']}: {b['licence']}" for b in bases)
    learnt = ", ".join(f"{d['collection']} ({d['licence']})" for d in data) or "none"
    return {
        "role": role,
        "model": model,
        "licence": f"trained here: derivative of {terms}; training data: {learnt}",
        "set_by": None,
        "derived_from": bases,
        "training_data": data,
    }


def _dataset_collections(config: dict, dataset: str) -> list[str]:
    return config["datasets"].get(dataset, {}).get("collections", [])


def trained_lora(config: dict, kind: str, run: str, path: str | None = None) -> dict:
    """A Conceptor, texture or Stencil LoRA trained by this workflow."""
    path = path or f"{config['models']['dir']}/{kind}-{run}.safetensors"
    if run not in config[kind]["runs"]:  # a file from a run no longer (or not) configured
        return _record(config, "LoRA", path, None)
    if kind == "conceptor":
        settings = config["conceptor"]["runs"][run]
        bases = [flux(config, config["conceptor"]["model"])]
        data = _dataset_collections(config, settings["dataset"])
    elif kind == "texture":
        settings = config["texture"]["runs"][run]
        bases = [flux(config, config["texture"]["model"])]
        dataset = settings["training_set"]
        data = _dataset_collections(config, dataset) if dataset else settings["collections"]
    else:
        stencil = config["stencil"]
        settings = stencil["runs"][run]
        bases = stencil_model(config)
        included = stencil["datasets"].get(settings["dataset"], {}).get("collections", True)
        data = stencil["collections"] if included else []
    return derived("LoRA", path, bases, collections(config, data))


def lora_file(config: dict, path: str, role: str = "LoRA") -> dict:
    """A LoRA by its file: trained here (by its name under models.dir), or any other file."""
    if str(path).startswith("stencil:"):  # an asset set's name for a Stencil run
        return trained_lora(config, "stencil", str(path).removeprefix("stencil:"))
    match = _TRAINED.search(str(path))
    models_dir = str(Path(config["models"]["dir"]))
    if match and str(Path(path).parent) == models_dir:
        kind, run = match.groups()
        runs = {"conceptor": config["conceptor"]["runs"], "texture": config["texture"]["runs"],
                "stencil": config["stencil"]["runs"]}[kind]  # fmt: skip
        if run in runs:
            return trained_lora(config, kind, run, str(path))
    return _record(config, role, path, None)


def transparent_vae(config: dict) -> dict:
    """The published transparent VAE, or the one trained here against the Stencil Flux."""
    vae = config["stencil"]["vae"]
    if vae["weights"]:
        return _record(config, "transparent VAE", vae["weights"], "transparent_vae")
    path = f"{config['models']['dir']}/stencil-transparent-vae.pth"
    base = flux(config, config["stencil"]["model"], "Flux VAE")
    return derived("transparent VAE", path, [base], [])


def stencil_model(config: dict) -> list[dict]:
    """Flux, the fused layer LoRA and the transparent VAE of every Stencil result."""
    stencil = config["stencil"]
    records = [flux(config, stencil["model"])]
    if stencil["layer_lora"]:
        records.append(_record(config, "layer LoRA", stencil["layer_lora"], "layer_lora"))
    return [*records, transparent_vae(config)]


def sr_model(config: dict, model: str) -> dict | None:
    """A mural's super-resolution model (none for lanczos)."""
    if model == "lanczos":
        return None
    if model.startswith("esrgan:"):
        run = model.removeprefix("esrgan:")
        settings = config["esrgan"].get(run)
        path = f"{config['models']['dir']}/esrgan-{run}.pth"
        if settings is None:
            return _record(config, "SR model", path, None)
        base = sr_model(config, settings["init"])
        data = collections(config, settings["collections"])
        return derived("SR model", path, [base] if base else [], data)
    kind = "realesrgan" if model.startswith("realesrgan-") else None
    return _record(config, "SR model", model, kind)


def mural(config: dict, name: str, diffusion: bool) -> list[dict]:
    """Every model a mural's pixels depend on."""
    settings = config["murals"][name]
    records = [sr_model(config, settings["model"])]
    if diffusion:
        refine = settings["refine"]
        records.append(flux(config, refine["model"] or config["conceptor"]["model"]))
        lora = refine["lora"]
        if lora.startswith("texture:"):
            records.append(trained_lora(config, "texture", lora.removeprefix("texture:")))
        elif lora != "none":
            records.append(lora_file(config, lora))
    return [r for r in records if r]


def concept(config: dict, name: str) -> list[dict]:
    run = config["conceptor"]["concepts"][name]["run"]
    records = [flux(config, config["conceptor"]["model"])]
    return records + ([trained_lora(config, "conceptor", run)] if run else [])


def stencil_assets(config: dict, name: str) -> list[dict]:
    """A Stencil asset set: the Stencil model and its style LoRAs (files, resolved)."""
    loras = config["stencil"]["assets"][name]["loras"]
    return stencil_model(config) + [lora_file(config, lora["file"]) for lora in loras]


def summary(records: list[dict]) -> str:
    """One line: role, model and licence of each record."""
    return (
        "; ".join(f"{r['role']} {Path(r['model']).name}: {r['licence']}" for r in records)
        or "no model"
    )
