# Review outputs of each mural: Deep Zoom pyramids and a static side-by-side viewer
# (results/view/NAME/index.html), and the thumbnail and provenance page of the report.


include: "view_layers.smk"


rule deep_zoom:
    input:
        image=lambda wildcards: viewer_images(wildcards.mural)[wildcards.layer],
        probed="work/{mural}/probe.json",  # a bad source is reported before any pyramid
        ready=viewer_layer_ready,
    output:
        dzi="results/view/{mural}/{layer}.dzi",
        tiles=directory("results/view/{mural}/{layer}_files"),
    log:
        "logs/{mural}/view/deep_zoom_{layer}.log",
    benchmark:
        "benchmarks/{mural}/view/deep_zoom_{layer}.tsv"
    wildcard_constraints:
        layer=r"[A-Za-z0-9]+",
    conda:
        "../envs/vips.yaml"
    params:
        tile_size=VIEW["tile_size"],
        overlap=VIEW["overlap"],
        quality=VIEW["quality"],
        overlays=lambda wildcards: layer_overlays(wildcards.mural, wildcards.layer),
    script:
        "../scripts/deep_zoom.py"


rule mural_viewer:
    input:
        unpack(viewer_inputs),
        template=workflow_file("resources/viewer/index.html"),
        openseadragon=openseadragon_script,
    output:
        page="results/view/{mural}/index.html",
        openseadragon=directory("results/view/{mural}/openseadragon"),
    log:
        "logs/{mural}/view/mural_viewer.log",
    conda:
        "../envs/vips.yaml"
    params:
        layout=lambda wildcards: viewer_layout(wildcards.mural),
    script:
        "../scripts/mural_viewer.py"


rule mural_summary:
    input:
        image="results/{mural}_final.tif",
        provenance="results/{mural}_final.provenance.json",
    output:
        thumbnail=report(
            "results/view/{mural}/thumbnail.png",
            caption="../report/mural_thumbnail.rst",
            category="Murals",
            subcategory="{mural}",
            labels={"mural": "{mural}", "figure": "thumbnail"},
        ),
        provenance=report(
            "results/view/{mural}/provenance.html",
            caption="../report/mural_provenance.rst",
            category="Murals",
            subcategory="{mural}",
            labels={"mural": "{mural}", "figure": "provenance"},
        ),
    log:
        "logs/{mural}/view/mural_summary.log",
    conda:
        "../envs/vips.yaml"
    params:
        long_side=VIEW["thumbnail"],
    script:
        "../scripts/mural_summary.py"
