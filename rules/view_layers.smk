# Input functions of the mural viewer (rules/view.smk): which images become its panels
# and overlays.
from snakemake.exceptions import WorkflowError

VIEW = config["view"]
OPENSEADRAGON_BUILD = (
    Path(workflow.basedir) / "viewer/node_modules/openseadragon/build/openseadragon"
)


def viewer_panels(mural):
    """Images shown side by side with one shared pan and zoom, in order: name -> (label,
    image). Stages that make more results (diffusion passes) append theirs here; the last
    panel carries the overlays."""
    source = MURALS[mural].source
    # a missing source is the probe's to report (the result panel waits for it)
    shown = Path(source).exists() or source in producible_sources()
    panels = {"source": ("Source", source)} if shown else {}
    # Each SR step and each refinement pass, streamed from its canvas (kept canvases only).
    if is_diffusion(mural) and not config["canvases"]["temporary"]:
        for step in range(1, last_pass_of(mural) + 1):
            panels[f"sr{step}"] = (f"SR step {step}", f"work/{mural}/canvas{step}.json")
            for stage in refine_stages(mural):
                if stage.step == step:
                    label = "coherence" if stage.coherence else "refinement"
                    panels[f"refine{step}p{stage.number}"] = (
                        f"Pass {step}.{stage.number} ({label})",
                        f"{stage_dir(mural, stage)}/allocation.json",
                    )
    panels["final"] = ("Result", f"results/{mural}_final.tif")
    return panels


def last_pass_of(mural):
    return len(mural_plan(mural).passes)


def viewer_layer_ready(wildcards):
    """A canvas panel is drawn once its pass is whole: its batch or blend markers (the
    layer's name says which: srK, refineKpN)."""
    mural, layer = wildcards.mural, wildcards.layer
    if layer.startswith("refine"):
        step, number = map(int, layer.removeprefix("refine").split("p"))
        return stage_blend_markers(mural, find_stage(mural, step, number))
    if layer.startswith("sr"):
        return batch_markers(mural, int(layer.removeprefix("sr")))
    return []


def viewer_overlays(mural):
    """Images drawn over the last panel, each with a toggle: name -> (label, image); a
    diffusion mural's seam heatmap (over its whole extent) is one."""
    if is_diffusion(mural):
        return {"seams": ("Seam QA heatmap", f"results/{mural}_seams.png")}
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
