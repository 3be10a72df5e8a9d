# BLK-Upscale texture LoRA, data half: texture-primitive crops chosen by measured texture,
# texture-centric sidecar captions (the artist's edits kept), datasets/texture-RUN and a
# review sheet.


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
