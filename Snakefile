# BLK-Assist: an artist's own scans in; private assistants and gigapixel murals out.
from snakemake.utils import min_version

min_version("9.0")


# Settings first; then each subsystem's input functions, every file on the ones above it.
include: "rules/settings.smk"
include: "rules/mural_plan.smk"
include: "rules/upscale_common.smk"
include: "rules/reroll_common.smk"
include: "rules/refine_common.smk"
include: "rules/plan_report.smk"
include: "rules/corpus_common.smk"
include: "rules/conceptor_common.smk"
include: "rules/texture_common.smk"
include: "rules/stencil_common.smk"


wildcard_constraints:
    mural="|".join(MURALS) or "(?!)",
    step=r"[1-9]\d*",
    batch=r"\d+",
    model="|".join(NCNN_MODELS),
    collection="|".join(COLLECTIONS) or "(?!)",
    dataset="|".join(DATASETS) or "(?!)",
    run="|".join({*ESRGAN_RUNS, *CONCEPTOR["runs"], *TEXTURE_RUNS}) or "(?!)",
    concept="|".join(CONCEPTOR["concepts"]) or "(?!)",
    pick="|".join(CONCEPTOR["picks"]) or "(?!)",
    stencil="|".join(STENCIL_SETS) or "(?!)",
    stencil_run="|".join(STENCIL_RUNS) or "(?!)",


include: "rules/demo.smk"
include: "rules/models.smk"
include: "rules/upscale.smk"
include: "rules/refine.smk"
include: "rules/corpus.smk"
include: "rules/captions.smk"
include: "rules/esrgan.smk"
include: "rules/conceptor.smk"
include: "rules/stencil.smk"
include: "rules/stencil_model.smk"
include: "rules/texture.smk"
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
        expand("datasets/stencil-{stencil}", stencil=STENCIL_SETS),
        expand("results/stencil/{stencil}_contact_sheet.png", stencil=STENCIL_SETS),
        expand("datasets/texture-{run}", run=TEXTURE_RUNS),
        expand("results/texture/{run}/review.html", run=TEXTURE_RUNS),
        expand("results/texture/{run}/model_card.json", run=TEXTURE_RUNS),
        expand(
            "results/stencil/{stencil_run}/model_card.json", stencil_run=STENCIL_RUNS
        ),
        expand(
            "results/stencil/assets/{stencil_set}/assets.json",
            stencil_set=STENCIL_ASSET_SETS,
        ),
        expand("results/compositions/{composition}.png", composition=COMPOSITIONS),
        kohya_loras(),
