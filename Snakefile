# BLK-Assist: an artist's own scans in; private assistants and gigapixel murals out.
from snakemake.utils import min_version

min_version("9.0")


include: "rules/common.smk"


wildcard_constraints:
    mural="|".join(MURALS) or "(?!)",
    step=r"\d+",
    batch=r"\d+",
    model="|".join(NCNN_MODELS),
    collection="|".join(COLLECTIONS) or "(?!)",
    dataset="|".join(DATASETS) or "(?!)",
    run="|".join(set(ESRGAN_RUNS) | set(CONCEPTOR["runs"])) or "(?!)",
    concept="|".join(CONCEPTOR["concepts"]) or "(?!)",
    pick="|".join(CONCEPTOR["picks"]) or "(?!)",


include: "rules/demo.smk"
include: "rules/models.smk"
include: "rules/upscale.smk"
include: "rules/corpus.smk"
include: "rules/captions.smk"
include: "rules/esrgan.smk"
include: "rules/conceptor.smk"
include: "rules/view.smk"


rule all:
    default_target: True
    input:
        expand("results/{mural}_final.tif", mural=MURALS),
        expand("results/view/{mural}/index.html", mural=MURALS),
        expand("results/view/{mural}/thumbnail.png", mural=MURALS),
        expand("datasets/{dataset}", dataset=DATASETS),
        expand("results/captions/{collection}_review.html", collection=COLLECTIONS),
        expand("results/esrgan/{run}/model_card.json", run=ESRGAN_RUNS),
        expand("results/datasets/{dataset}_summary.html", dataset=DATASETS),
        expand("results/esrgan/{run}/validation.html", run=ESRGAN_RUNS),
        expand("results/conceptor/{run}/validation.html", run=CONCEPTOR["runs"]),
        expand("results/conceptor/{run}/model_card.json", run=CONCEPTOR["runs"]),
        expand(
            "results/concepts/{concept}/concepts.json", concept=CONCEPTOR["concepts"]
        ),
        expand("results/concepts/picks/{pick}.png", pick=CONCEPTOR["picks"]),
