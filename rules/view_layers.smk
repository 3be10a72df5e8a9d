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


def layer_stage(mural, layer):
    """The refinement pass a canvas layer shows (refineKpN; before: the last pass)."""
    if layer == "before":
        return refine_stages(mural)[-1]
    step, number = map(int, layer.removeprefix("refine").split("p"))
    return find_stage(mural, step, number)


def viewer_layer_ready(wildcards):
    """A canvas panel is drawn once its pass is whole and its re-rolled pieces are made
    (the layer's name says which: srK, refineKpN, before)."""
    mural, layer = wildcards.mural, wildcards.layer
    if layer.startswith("refine") or layer == "before":
        stage = layer_stage(mural, layer)
        pieces = [] if layer == "before" else reroll_markers(mural, "blocks", stage)
        return stage_done(mural, stage) + pieces
    if layer.startswith("sr"):
        step = int(layer.removeprefix("sr"))
        return batch_markers(mural, step) + reroll_markers(mural, "tiles", step)
    return []


def layer_overlays(mural, layer):
    """A canvas layer's re-rolled pieces, laid over it (the before layer has none)."""
    if layer.startswith("refine"):
        return stage_view(mural, layer_stage(mural, layer))["overlays"]
    if layer.startswith("sr") and is_diffusion(mural):
        return sr_view(mural, int(layer.removeprefix("sr")))["overlays"]
    return []


def rerolled_regions(mural):
    """Where the re-roll changed the last pass's canvas (its pixels), if it did."""
    if not is_diffusion(mural):
        return []
    return [
        list(b)
        for b in reroll_plan(mural).regions.get(refine_stages(mural)[-1].name, [])
    ]


def viewer_overlays(mural):
    """Images drawn over the last panel, each with a toggle: name -> (label, image); a
    diffusion mural's seam heatmap (over its whole extent) is one."""
    if is_diffusion(mural):
        return {"seams": ("Seam QA heatmap", f"results/{mural}_seams.png")}
    return {}


def viewer_before(mural):
    """The last pass's own canvas, shown in the re-rolled regions by the page's
    before/after toggle."""
    if rerolled_regions(mural):
        last = refine_stages(mural)[-1]
        return {
            "before": (
                "Before the re-roll",
                f"{stage_dir(mural, last)}/allocation.json",
            )
        }
    return {}


def viewer_images(mural):
    layers = {**viewer_panels(mural), **viewer_overlays(mural), **viewer_before(mural)}
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

    panels = entries(viewer_panels(mural))
    if is_diffusion(mural):  # hovering and picking windows: each pass's grid
        stages = refine_stages(mural)
        for panel in panels:
            if panel["name"].startswith("refine"):
                panel["grid"] = layer_stage(mural, panel["name"]).geometry()
            elif panel["name"] == "final":
                panel["grid"] = stages[-1].geometry()
    before = entries(viewer_before(mural))
    return {
        "mural": mural,
        "grids": (
            [s.geometry() for s in refine_stages(mural)] if is_diffusion(mural) else []
        ),
        "panels": panels,
        "overlays": entries(viewer_overlays(mural)),
        "before": {**before[0], "regions": rerolled_regions(mural)} if before else None,
    }


def viewer_inputs(wildcards):
    """The pyramids, and a diffusion mural's seam report (its worst windows)."""
    inputs = {"pyramids": viewer_pyramids(wildcards)}
    if is_diffusion(wildcards.mural):
        inputs["seams"] = f"results/{wildcards.mural}_seams.json"
    return inputs


def openseadragon_script(wildcards):
    script = OPENSEADRAGON_BUILD / "openseadragon.min.js"
    if not script.is_file():
        raise WorkflowError(
            f"OpenSeadragon is not installed ({script} is missing): run `make viewer-deps` "
            "(npm ci in viewer/) before building a viewer."
        )
    return str(script)
