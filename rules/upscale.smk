# Gigapixel upscaling: source -> canvas0 -> (pass k: tile batches) -> canvas k -> BigTIFF.
# check_mural refuses a bad model or a full disk in seconds, before the source is ingested.


checkpoint probe_source:
    input:
        source=source_input,
    output:
        report="work/{mural}/probe.json",
    log:
        "logs/{mural}/probe_source.log",
    benchmark:
        "benchmarks/{mural}/probe_source.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        source=lambda wildcards: MURALS[wildcards.mural].source,
        max_pixels=MAX_SOURCE_PIXELS,
    script:
        "../scripts/probe_source.py"


rule check_mural:
    input:
        weights=model_weights,
        report="work/{mural}/probe.json",  # the plan behind params
    output:
        # temp(): used once by the ingest; afterwards only a change of what it checks
        # (recorded in Snakemake's metadata) runs it again, and then everything after it.
        check=temp("work/{mural}/check.json"),
    log:
        "logs/{mural}/check_mural.log",
    benchmark:
        "benchmarks/{mural}/check_mural.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        model=lambda wildcards: MURALS[wildcards.mural].model,
        refine_model=lambda wildcards: refine_model(wildcards.mural),
        weights=lambda wildcards: weights_path(MURALS[wildcards.mural].model),
        source=lambda wildcards: mural_source(wildcards.mural),
        plan=lambda wildcards: [
            p.geometry() for p in mural_plan(wildcards.mural).passes
        ],
        final_size=lambda wildcards: (
            mural_plan(wildcards.mural).final_width,
            mural_plan(wildcards.mural).final_height,
        ),
        replaced=lambda wildcards: [
            f"work/{wildcards.mural}",
            f"results/{wildcards.mural}_final.tif",
        ],
    script:
        "../scripts/check_mural.py"


rule report_plan:
    input:
        report="work/{mural}/probe.json",
    output:
        plan="results/{mural}_plan.json",
    log:
        "logs/{mural}/report_plan.log",
    conda:
        "../envs/vips.yaml"
    params:
        report=lambda wildcards: mural_report(wildcards.mural),
    script:
        "../scripts/report_plan.py"


rule ingest_source:
    input:
        source=source_input,
        report="work/{mural}/probe.json",
        check="work/{mural}/check.json",
    output:
        canvas=canvas_output(directory("work/{mural}/canvas0.zarr")),
    log:
        "logs/{mural}/ingest_source.log",
    benchmark:
        "benchmarks/{mural}/ingest_source.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        source=lambda wildcards: MURALS[wildcards.mural].source,
        chunk=lambda wildcards: MURALS[wildcards.mural].tile,
        max_pixels=MAX_SOURCE_PIXELS,
    script:
        "../scripts/ingest_source.py"


rule allocate_canvas:
    input:
        unpack(allocation_inputs),
        # the plan (params) comes from the probe when the workflow makes the source
        report="work/{mural}/probe.json",
    output:
        allocation="work/{mural}/canvas{step}.json",
        canvas=canvas_output(directory("work/{mural}/canvas{step}.zarr")),
    log:
        "logs/{mural}/allocate_canvas{step}.log",
    benchmark:
        "benchmarks/{mural}/allocate_canvas{step}.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        plan=lambda wildcards: pass_plan(wildcards).geometry(),
        upscale=pass_settings,
        progress="work/{mural}/canvas{step}.progress",
        rerolls="work/{mural}/pass{step}/reroll",
    script:
        "../scripts/allocate_canvas.py"


# Scheduling knobs (tiles_per_forward, threads, the GPU lock folder) are read from the
# config inside the job, never passed as params: changing them must not redo any tile.
# Markers are named by tile range; the list changes with tiles_per_job, which is why the
# profiles drop Snakemake's "input" rerun trigger (README: Resume and re-batching).
rule upscale_tile_batch:
    input:
        allocation="work/{mural}/canvas{step}.json",
        source=pass_source,
        canvas="work/{mural}/canvas{step}.zarr",
        weights=model_weights,
    output:
        marker="work/{mural}/pass{step}/tiles-{first}-{last}.done",
    log:
        "logs/{mural}/pass{step}/tiles-{first}-{last}.log",
    benchmark:
        "benchmarks/{mural}/pass{step}/tiles-{first}-{last}.tsv"
    wildcard_constraints:
        first=r"\d+",
        last=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: tile_threads
    resources:
        gpu=gpus_for,
    script:
        "../scripts/upscale_tile_batch.py"


rule assemble_mural:
    input:
        unpack(final_pass_files),
        report="work/{mural}/probe.json",
        weights=model_weights,
        refinement=lambda wildcards: refinement_provenance(wildcards),
        rerolls=lambda wildcards: final_reroll(wildcards)["markers"],
    output:
        image="results/{mural}_final.tif",
        provenance="results/{mural}_final.provenance.json",
    log:
        "logs/{mural}/assemble_mural.log",
    benchmark:
        "benchmarks/{mural}/assemble_mural.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        settings=lambda wildcards: MURALS[wildcards.mural].output_settings(),
        final_size=lambda wildcards: (
            mural_plan(wildcards.mural).final_width,
            mural_plan(wildcards.mural).final_height,
        ),
        path=lambda wildcards: path_record(wildcards.mural),
        # the last pass's re-rolled blocks, laid over its canvas (rules/reroll.smk)
        overlays=lambda wildcards: final_reroll(wildcards)["overlays"],
    script:
        "../scripts/assemble_mural.py"


if workflow.is_main_process:
    print_plans()
