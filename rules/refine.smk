# BLK-Upscale diffusion path: after each SR step, refinement passes of Flux img2img over
# overlapping windows (tile jobs -> per-pass window store -> blend jobs -> canvas), a seam
# QA job per pass, a coherence pass, every pass on its own grid offset, and one report per
# mural. Tile and blend jobs are named by the window / block range they cover: a
# re-batching (tiles_per_job, blocks_per_job) keeps every finished window and block.


wildcard_constraints:
    rpass=r"\d+",
    first=r"\d+",
    last=r"\d+",


rule allocate_refinement:
    input:
        unpack(refine_allocation_inputs),
        report="work/{mural}/probe.json",  # the plan behind params
    output:
        allocation="work/{mural}/refine{step}.{rpass}/allocation.json",
    log:
        "logs/{mural}/refine{step}.{rpass}/allocate.log",
    benchmark:
        "benchmarks/{mural}/refine{step}.{rpass}/allocate.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        # All pixel settings, not just the geometry: a change must reset the pass's progress.
        settings=refine_allocation_settings,
        geometry=lambda wildcards: refine_stage(wildcards).geometry(),
        folder="work/{mural}/refine{step}.{rpass}",
    script:
        "../scripts/allocate_refinement.py"


rule refine_tile_batch:
    input:
        allocation="work/{mural}/refine{step}.{rpass}/allocation.json",
        report="work/{mural}/probe.json",  # the plan behind params
        model=lambda wildcards: refine_model(wildcards.mural),
        lora=lambda wildcards: REFINE[wildcards.mural].lora or [],
    output:
        marker="work/{mural}/refine{step}.{rpass}/tiles-{first}-{last}.done",
    log:
        "logs/{mural}/refine{step}.{rpass}/tiles-{first}-{last}.log",
    benchmark:
        "benchmarks/{mural}/refine{step}.{rpass}/tiles-{first}-{last}.tsv"
    conda:
        "../envs/torch.yaml"
    # One thread: two-thread passes waited for both cores, idle beside the demo's one-thread
    # Stencil training on 2 cores; windows split over jobs (tiles_per_job) use more cores.
    threads: 1
    resources:
        gpu=1,
    params:
        settings=lambda wildcards: refine_pixel_settings(wildcards),
    script:
        "../scripts/refine_tile_batch.py"


rule blend_refinement:
    input:
        allocation="work/{mural}/refine{step}.{rpass}/allocation.json",
        tiles=blend_tile_markers,
    output:
        marker="work/{mural}/refine{step}.{rpass}/blend-{first}-{last}.done",
    log:
        "logs/{mural}/refine{step}.{rpass}/blend-{first}-{last}.log",
    benchmark:
        "benchmarks/{mural}/refine{step}.{rpass}/blend-{first}-{last}.tsv"
    conda:
        "../envs/vips.yaml"
    script:
        "../scripts/blend_refinement.py"


# The QA gate (murals.NAME.refine.qa with rounds > 0): the pass's last writer, so the next
# pass (or SR step, or the assembly) reads its canvas after it.
rule qa_rerender:
    input:
        allocation="work/{mural}/refine{step}.{rpass}/allocation.json",
        blends=lambda wildcards: stage_blend_markers(
            wildcards.mural, refine_stage(wildcards)
        ),
        model=lambda wildcards: refine_model(wildcards.mural),
        lora=lambda wildcards: REFINE[wildcards.mural].lora or [],
    output:
        gate="work/{mural}/refine{step}.{rpass}/qa.json",
    log:
        "logs/{mural}/refine{step}.{rpass}/qa.log",
    benchmark:
        "benchmarks/{mural}/refine{step}.{rpass}/qa.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=qa_gpus,
    params:
        settings=lambda wildcards: refine_pixel_settings(wildcards),
        qa=qa_settings,
    script:
        "../scripts/qa_rerender.py"


rule measure_seams:
    input:
        allocation="work/{mural}/refine{step}.{rpass}/allocation.json",
        blends=lambda wildcards: stage_blend_markers(
            wildcards.mural, refine_stage(wildcards)
        ),
        gate=seam_gate,
    output:
        report="work/{mural}/refine{step}.{rpass}/seams.json",
        heatmap="work/{mural}/refine{step}.{rpass}/seams.png",
    log:
        "logs/{mural}/refine{step}.{rpass}/seams.log",
    benchmark:
        "benchmarks/{mural}/refine{step}.{rpass}/seams.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        gate=gate_settings,
    script:
        "../scripts/measure_seams.py"


rule refine_report:
    input:
        unpack(refine_report_inputs),
        report="work/{mural}/probe.json",  # the plan behind params
    output:
        seams_png=report(
            "results/{mural}_seams.png",
            caption="../report/seams.rst",
            category="Murals",
        ),
        seams_json="results/{mural}_seams.json",
        provenance="work/{mural}/refine.provenance.json",
    log:
        "logs/{mural}/refine_report.log",
    benchmark:
        "benchmarks/{mural}/refine_report.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        path=lambda wildcards: path_record(wildcards.mural),
        stages=lambda wildcards: refine_report_stages(wildcards.mural),
        rerolls=lambda wildcards: reroll_report(wildcards.mural),
    script:
        "../scripts/refine_report.py"


include: "reroll.smk"
