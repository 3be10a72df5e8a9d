# Captions: sidecar .txt per image (the artist may edit them), and a review sheet.


checkpoint caption_collection:
    input:
        manifest="work/corpus/{collection}/manifest.tsv",
        system_prompt=CAPTION_SETTINGS["system_prompt"],
        examples=CAPTION_SETTINGS["examples"],
    output:
        index="captions/{collection}/index.json",
    log:
        "logs/captions/{collection}.log",
    benchmark:
        "benchmarks/captions/caption_{collection}.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        gpu=caption_resources,
    params:
        settings=CAPTION_SETTINGS,
        description=lambda wildcards: COLLECTIONS[wildcards.collection]["description"],
        folder="captions/{collection}",
    script:
        "../scripts/caption_collection.py"


rule caption_review_sheet:
    input:
        index="captions/{collection}/index.json",
    output:
        sheet=report(
            "results/captions/{collection}_review.html",
            caption="../report/caption_review.rst",
            category="Captions",
            labels={"collection": "{collection}"},
        ),
    log:
        "logs/captions/{collection}_review.log",
    conda:
        "../envs/vips.yaml"
    script:
        "../scripts/caption_review_sheet.py"
