"""The licence of every model a result depends on: the schema's defaults for the known
models, per-file settings, derivatives trained here, and the plan line."""

from __future__ import annotations

import pytest
import yaml

from blkassist import licences
from blkassist.config import validate_config
from blkassist.plan import plan_line
from tests.conftest import REPO

SCHEMA = REPO / "config" / "schema.yaml"
FLUX_NC = "FLUX.1 [dev] Non-Commercial License"


def config(**sections) -> dict:
    base = {
        "corpus": {"collections": {
            "inks": {"path": "scans", "artist": "Jane Doe", "licence": "all rights reserved",
                     "consent": True}}},
        "datasets": {"set": {"collections": ["inks"]}},
    }  # fmt: skip
    filled = {**base, **sections}
    validate_config(filled, SCHEMA)
    return filled


def test_known_models_get_the_schemas_licences_and_files_override_them(tmp_path):
    manifest = tmp_path / "flux.yaml"
    manifest.write_text(yaml.safe_dump({"kind": "single_file", "comfyui": "ComfyUI"}))
    c = config(licences={"files": {"models/FLUX.1-schnell": "Apache-2.0"}})
    folder = licences.flux(c, "models/FLUX.1-dev")
    assert folder["licence"].startswith(FLUX_NC) and folder["set_by"] == "licences.flux"
    assert licences.flux(c, str(manifest))["licence"].startswith(FLUX_NC)  # ComfyUI's files
    assert licences.flux(c, "resources/flux/tiny.yaml")["licence"].startswith("none: random")
    # A random spec that does not declare `demo: true` still holds no one's weights.
    spec = yaml.safe_load((REPO / "resources/flux/tiny.yaml").read_text())
    del spec["demo"]
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(spec))
    assert licences.flux(c, str(tmp_path / "mine.yaml"))["licence"].startswith("none: random")
    schnell = licences.flux(c, "models/FLUX.1-schnell")
    assert schnell["licence"] == "Apache-2.0"
    assert schnell["set_by"] == "licences.files['models/FLUX.1-schnell']"
    assert licences.sr_model(c, "realesrgan-x4plus")["licence"].startswith("BSD-3-Clause")
    assert licences.sr_model(c, "lanczos") is None
    other = licences.sr_model(c, "models/mine.pth")
    assert other["licence"] == "unknown: set licences.files['models/mine.pth'] to its terms"


def test_models_trained_here_are_derivatives_of_their_base_and_data():
    c = config(
        conceptor={"model": "models/FLUX.1-dev", "runs": {"ink": {"dataset": "set"}},
                   "concepts": {"harbour": {"run": "ink", "prompts": ["a harbour"]}}},
        esrgan={"inks": {"collections": ["inks"]}},
    )  # fmt: skip
    lora = licences.trained_lora(c, "conceptor", "ink")
    assert lora["model"] == "work/models/conceptor-ink.safetensors"
    assert [b["model"] for b in lora["derived_from"]] == ["models/FLUX.1-dev"]
    assert lora["training_data"] == [
        {"collection": "inks", "artist": "Jane Doe", "licence": "all rights reserved"}
    ]
    assert FLUX_NC in lora["licence"] and "inks (all rights reserved)" in lora["licence"]
    assert licences.lora_file(c, "work/models/conceptor-ink.safetensors") == lora
    concept = licences.concept(c, "harbour")
    assert [r["role"] for r in concept] == ["base model", "LoRA"]
    sr = licences.sr_model(c, "esrgan:inks")
    assert sr["derived_from"][0]["model"] == "realesrgan-x4plus"
    assert sr["licence"].startswith("trained here: derivative of realesrgan-x4plus: BSD-3")


@pytest.mark.parametrize("published", [True, False])
def test_stencil_results_name_the_layer_lora_and_the_transparent_vae(published):
    stencil = {"model": "models/FLUX.1-dev", "assets": {"set": {"prompts": ["a cube"],
               "loras": [{"file": "styles/ink.safetensors"}]}}}  # fmt: skip
    if published:
        stencil |= {"layer_lora": "models/layerlora.safetensors",
                    "vae": {"weights": "models/TransparentVAE.pth", "spec": "x.yaml"}}  # fmt: skip
    records = licences.stencil_assets(config(stencil=stencil), "set")
    roles = [r["role"] for r in records]
    if published:
        assert roles == ["base model", "layer LoRA", "transparent VAE", "LoRA"]
        assert records[1]["licence"].startswith("AFL-3.0") and "RedAIGC" in records[1]["licence"]
        assert records[2]["set_by"] == "licences.transparent_vae"
    else:
        assert roles == ["base model", "transparent VAE", "LoRA"]
        assert records[1]["licence"].startswith("trained here: derivative of models/FLUX.1-dev")
    assert records[-1]["licence"].startswith("unknown: set licences.files")


def test_the_plan_line_names_the_licences_of_the_mural():
    c = config(
        texture={"model": "models/FLUX.1-dev", "runs": {"ink": {"collections": ["inks"]}}},
        murals={
            "m": {
                "source": "m.tif",
                "refine": {"lora": "texture:ink", "model": "models/FLUX.1-dev"},
            }
        },
    )
    records = licences.mural(c, "m", diffusion=True)
    assert [r["role"] for r in records] == ["SR model", "base model", "LoRA"]
    assert licences.mural(c, "m", diffusion=False) == records[:1]
    c["murals"]["m"]["refine"]["lora"] = "texture:gone"  # a run not in this config
    gone = licences.mural(c, "m", diffusion=True)[-1]
    assert gone["licence"].startswith("unknown: set licences.files['work/models/texture-gone")
    report = {"final": {"width": 100, "height": 80}, "passes": [], "tiles": 1, "jobs": 1,
              "disk_bytes_total": 10, "gpu_hours": 0.0, "licences": records}  # fmt: skip
    line = plan_line("m", report)
    assert "licences: SR model realesrgan-x4plus: BSD-3-Clause" in line
    assert f"base model FLUX.1-dev: {FLUX_NC}" in line
    assert "LoRA texture-ink.safetensors: trained here: derivative of" in line
