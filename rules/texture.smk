# BLK-Upscale's texture LoRA: texture-primitive crops chosen by measured texture,
# texture-centric sidecar captions (the artist's edits kept), datasets/texture-RUN and a
# review sheet; then a Flux.1-dev adapter trained on them for tiled diffusion refinement.


rule select_texture_crops:
    input:
        unpack(texture_inputs),
    output:
        crops=directory("work/texture/{run}/crops"),
        plan="work/texture/{run}/crops.json",
    log:
        "logs/texture/select_{run}.log",
    benchmark:
        "benchmarks/texture/select_{run}.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        settings=lambda wildcards: texture_selection(wildcards.run),
    script:
        "../scripts/select_texture_crops.py"


checkpoint caption_texture_crops:
    input:
        unpack(texture_prompt),
        plan="work/texture/{run}/crops.json",
        crops="work/texture/{run}/crops",
    output:
        index="captions/texture-{run}/index.json",
    log:
        "logs/texture/caption_{run}.log",
    benchmark:
        "benchmarks/texture/caption_{run}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        gpu=caption_resources,
    params:
        # What the captions come from; the server's scheduling knobs (concurrency,
        # timeouts, retries) are read from the config in the script and never rerun.
        captioner=TEXTURE_CAPTIONER,
        folder="captions/texture-{run}",
    script:
        "../scripts/caption_texture_crops.py"


rule build_texture_dataset:
    input:
        unpack(texture_dataset_inputs),
    output:
        dataset=directory("datasets/texture-{run}"),
    log:
        "logs/datasets/texture-{run}.log",
    benchmark:
        "benchmarks/datasets/texture-{run}.tsv"
    conda:
        "../envs/vips.yaml"
    script:
        "../scripts/build_texture_dataset.py"


rule texture_review_sheet:
    input:
        unpack(texture_dataset_inputs),
    output:
        sheet=report(
            "results/texture/{run}/review.html",
            caption="../report/texture_review.rst",
            category="Texture",
        ),
    log:
        "logs/texture/review_{run}.log",
    conda:
        "../envs/vips.yaml"
    script:
        "../scripts/texture_review_sheet.py"


rule train_texture:
    input:
        unpack(texture_training_inputs),
    output:
        lora=f"{MODELS_DIR}/texture-{{run}}.safetensors",
        model_card=report(
            "results/texture/{run}/model_card.json",
            caption="../report/texture_model_card.rst",
            category="Texture LoRA",
        ),
        contact_sheet=report(
            "results/texture/{run}/contact_sheet.png",
            caption="../report/texture_contact_sheet.rst",
            category="Texture LoRA",
        ),
        loss_plot=report(
            "results/texture/{run}/losses.png",
            caption="../report/texture_losses.rst",
            category="Texture LoRA",
        ),
    log:
        "logs/texture/{run}.log",
    benchmark:
        "benchmarks/texture/{run}.tsv"
    conda:
        "../envs/torch.yaml"
    # One thread, so it runs beside one-thread jobs on 2 cores (see rules/esrgan.smk).
    threads: 1
    resources:
        gpu=1,
    params:
        recipe=lambda wildcards: texture_recipe_params(wildcards.run),
        chosen_step=lambda wildcards: TEXTURE["runs"][wildcards.run]["chosen_step"],
        run_dir="work/texture/{run}",
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/train_texture.py"
