# Gigapixel upscaling: source -> canvas0 -> (pass k: tile batches) -> canvas k -> BigTIFF.


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


rule ingest_source:
    input:
        source=source_input,
        report="work/{mural}/probe.json",
    output:
        canvas=directory("work/{mural}/canvas0.zarr"),
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
    output:
        allocation="work/{mural}/canvas{step}.json",
    log:
        "logs/{mural}/allocate_canvas{step}.log",
    benchmark:
        "benchmarks/{mural}/allocate_canvas{step}.tsv"
    conda:
        "../envs/torch.yaml"
    params:
        plan=lambda wildcards: asdict(pass_plan(wildcards)),
        canvas="work/{mural}/canvas{step}.zarr",
        progress="work/{mural}/canvas{step}.progress",
    script:
        "../scripts/allocate_canvas.py"


rule upscale_tile_batch:
    input:
        allocation="work/{mural}/canvas{step}.json",
        weights=model_weights,
    output:
        marker="work/{mural}/pass{step}/batch-{batch}.done",
    log:
        "logs/{mural}/pass{step}/batch-{batch}.log",
    benchmark:
        "benchmarks/{mural}/pass{step}/batch-{batch}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=gpus_for,
    params:
        model=lambda wildcards: MURALS[wildcards.mural].model,
        pad=lambda wildcards: MURALS[wildcards.mural].pad,
        tiles_per_forward=lambda wildcards: MURALS[wildcards.mural].tiles_per_forward,
        precision=lambda wildcards: MURALS[wildcards.mural].precision,
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/upscale_tile_batch.py"


rule assemble_mural:
    input:
        batches=final_batches,
        allocation=final_canvas,
        report="work/{mural}/probe.json",
        weights=model_weights,
        refinement=lambda wildcards: refinement_provenance(wildcards),
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
        settings=lambda wildcards: asdict(MURALS[wildcards.mural]),
        final_size=lambda wildcards: (
            mural_plan(wildcards.mural).final_width,
            mural_plan(wildcards.mural).final_height,
        ),
        path=lambda wildcards: path_record(wildcards.mural),
    script:
        "../scripts/assemble_mural.py"
