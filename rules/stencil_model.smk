# BLK-Stencil model: the transparent VAE (trained here at tiny size, or the published
# weights), RGBA assets from prompts with Z-role tags, and layered compositions.


wildcard_constraints:
    stencil_set="|".join(STENCIL_ASSET_SETS) or "(?!)",
    composition="|".join(COMPOSITIONS) or "(?!)",


if STENCIL_SHAPES:

    rule draw_stencil_shapes:
        output:
            folder=directory(STENCIL_SHAPES["path"]),
        log:
            "logs/stencil/draw_stencil_shapes.log",
        conda:
            "../envs/vips.yaml"
        params:
            shapes=STENCIL_SHAPES["count"],
            size=STENCIL_SHAPES["size"],
            seed=STENCIL_SHAPES["seed"],
        script:
            "../scripts/draw_stencil_shapes.py"


if not STENCIL_VAE["weights"]:

    rule train_transparent_vae:
        input:
            assets=stencil_training_assets,
            model=STENCIL_FLUX_MODEL,
            spec=STENCIL_VAE_SPEC,
        output:
            weights=STENCIL_VAE_WEIGHTS,
            model_card=report(
                "results/stencil/vae/model_card.json",
                caption="../report/stencil_vae_card.rst",
                category="BLK-Stencil",
            ),
            sheet=report(
                "results/stencil/vae/round_trip.png",
                caption="../report/stencil_vae_round_trip.rst",
                category="BLK-Stencil",
            ),
        log:
            "logs/stencil/train_transparent_vae.log",
        benchmark:
            "benchmarks/stencil/train_transparent_vae.tsv"
        conda:
            "../envs/torch.yaml"
        # The tiny model's ops are too small to share out: a second thread mostly waits.
        threads: 1
        params:
            settings={k: v for k, v in STENCIL_VAE["train"].items() if k != "assets"},
        script:
            "../scripts/train_transparent_vae.py"


rule generate_stencil_assets:
    input:
        unpack(stencil_asset_inputs),
    output:
        index="results/stencil/assets/{stencil_set}/assets.json",
        sheet=report(
            "results/stencil/assets/{stencil_set}/contact_sheet.png",
            caption="../report/stencil_assets.rst",
            category="BLK-Stencil",
        ),
    log:
        "logs/stencil/assets_{stencil_set}.log",
    benchmark:
        "benchmarks/stencil/assets_{stencil_set}.tsv"
    conda:
        "../envs/torch.yaml"
    # One thread: on CPU a second one made the demo's small Flux 5-40x slower on a busy
    # machine (a GPU run hardly uses it).
    threads: 1
    resources:
        gpu=1,
    params:
        settings=lambda wildcards: STENCIL_ASSET_SETS[wildcards.stencil_set],
        folder="results/stencil/assets/{stencil_set}",
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/generate_stencil_assets.py"


rule compose:
    input:
        unpack(composition_inputs),
    output:
        ora="results/compositions/{composition}.ora",
        psd="results/compositions/{composition}.psd",
        png=report(
            "results/compositions/{composition}.png",
            caption="../report/composition.rst",
            category="Compositions",
        ),
        provenance="results/compositions/{composition}.json",
    log:
        "logs/compositions/{composition}.log",
    benchmark:
        "benchmarks/compositions/{composition}.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        size=lambda wildcards: COMPOSITIONS[wildcards.composition].get("size"),
        elements=lambda wildcards: composition_elements(wildcards.composition),
    script:
        "../scripts/compose.py"


rule train_stencil:
    input:
        unpack(stencil_lora_inputs),
    output:
        lora=f"{MODELS_DIR}/stencil-{{stencil_run}}.safetensors",
        model_card=report(
            "results/stencil/{stencil_run}/model_card.json",
            caption="../report/stencil_lora_card.rst",
            category="BLK-Stencil",
        ),
        contact_sheet=report(
            "results/stencil/{stencil_run}/contact_sheet.png",
            caption="../report/stencil_lora_samples.rst",
            category="BLK-Stencil",
        ),
        loss_plot=report(
            "results/stencil/{stencil_run}/losses.png",
            caption="../report/stencil_lora_losses.rst",
            category="BLK-Stencil",
        ),
    log:
        "logs/stencil/train_{stencil_run}.log",
    benchmark:
        "benchmarks/stencil/train_{stencil_run}.tsv"
    conda:
        "../envs/torch.yaml"
    # One thread: the demo's 1200 steps took 49 s with one and ~30 min with two on a busy
    # two-core machine (a GPU run hardly uses it).
    threads: 1
    resources:
        gpu=1,
    params:
        settings=lambda wildcards: stencil_lora_params(wildcards.stencil_run),
        chosen_step=lambda wildcards: STENCIL_RUNS[wildcards.stencil_run]["chosen_step"],
        run_dir="work/stencil/{stencil_run}",
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/train_stencil.py"
