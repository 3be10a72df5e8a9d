# BLK-Upscale's texture LoRA: a Flux.1-dev adapter trained on texture crops of the
# artist's work (datasets/texture-RUN), for tiled diffusion refinement of murals.


rule train_texture:
    input:
        unpack(texture_inputs),
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
    threads: 2
    resources:
        gpu=1,
    params:
        recipe=lambda wildcards: texture_recipe_params(wildcards.run),
        chosen_step=lambda wildcards: TEXTURE["runs"][wildcards.run]["chosen_step"],
        run_dir="work/texture/{run}",
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/train_texture.py"
