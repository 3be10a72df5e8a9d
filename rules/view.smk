# Review outputs of each mural: Deep Zoom pyramids and a static side-by-side viewer
# (results/view/NAME/index.html), and the thumbnail and provenance page of the report.
from snakemake.exceptions import WorkflowError

VIEW = config["view"]
OPENSEADRAGON_BUILD = (
    Path(workflow.basedir) / "viewer/node_modules/openseadragon/build/openseadragon"
)


def viewer_panels(mural):
    """Images shown side by side with one shared pan and zoom, in order: name -> (label,
    image). Stages that make more results (diffusion passes) append theirs here; the last
    panel carries the overlays."""
    return {
        "source": ("Source", MURALS[mural].source),
        "final": ("Result", f"results/{mural}_final.tif"),
    }


def viewer_overlays(mural):
    """Images drawn over the last panel, each with a toggle: name -> (label, image). A seam
    heatmap (results/{mural}_seams.png) goes here once a rule makes it."""
    return {}


def viewer_images(mural):
    layers = {**viewer_panels(mural), **viewer_overlays(mural)}
    return {name: image for name, (_, image) in layers.items()}


def viewer_pyramids(wildcards):
    return [
        f"results/view/{wildcards.mural}/{name}.dzi"
        for name in viewer_images(wildcards.mural)
    ]


def viewer_layout(mural):
    def entries(layers):
        return [
            {"name": name, "label": label, "dzi": f"results/view/{mural}/{name}.dzi"}
            for name, (label, _) in layers.items()
        ]

    return {
        "panels": entries(viewer_panels(mural)),
        "overlays": entries(viewer_overlays(mural)),
    }


def openseadragon_script(wildcards):
    script = OPENSEADRAGON_BUILD / "openseadragon.min.js"
    if not script.is_file():
        raise WorkflowError(
            f"OpenSeadragon is not installed ({script} is missing): run `make viewer-deps` "
            "(npm ci in viewer/) before building a viewer."
        )
    return str(script)


rule deep_zoom:
    input:
        image=lambda wildcards: viewer_images(wildcards.mural)[wildcards.layer],
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
    script:
        "../scripts/deep_zoom.py"


rule mural_viewer:
    input:
        pyramids=viewer_pyramids,
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
