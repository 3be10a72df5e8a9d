# Re-rolls (murals.NAME.refine.reroll, refine.reroll_file): the chosen windows, the blocks
# they touch and the later windows and SR tiles reading them are made again as pieces
# beside each pass (work/NAME/refineS.P/reroll/, work/NAME/passK/reroll/), never over its
# own windows; the assembly and the viewer lay them over the canvases. Jobs are named by
# the pieces they make (not yet made ones only): a dry run lists exactly the work.


wildcard_constraints:
    chunk=r"\d+-\d+-[0-9a-f]{16}",


rule reroll_windows:
    input:
        unpack(reroll_window_inputs),
    output:
        marker="work/{mural}/refine{step}.{rpass}/reroll/windows-{chunk}.done",
    log:
        "logs/{mural}/refine{step}.{rpass}/reroll-windows-{chunk}.log",
    benchmark:
        "benchmarks/{mural}/refine{step}.{rpass}/reroll-windows-{chunk}.tsv"
    conda:
        "../envs/torch.yaml"
    # One thread, as refine_tile_batch (rules/refine.smk), whose windows it samples again.
    threads: 1
    resources:
        gpu=1,
    params:
        settings=lambda wildcards: refine_pixel_settings(wildcards),
        job=reroll_window_params,
    script:
        "../scripts/reroll_windows.py"


rule reroll_blocks:
    input:
        unpack(reroll_block_inputs),
    output:
        marker="work/{mural}/refine{step}.{rpass}/reroll/blocks-{chunk}.done",
    log:
        "logs/{mural}/refine{step}.{rpass}/reroll-blocks-{chunk}.log",
    benchmark:
        "benchmarks/{mural}/refine{step}.{rpass}/reroll-blocks-{chunk}.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        members=reroll_block_members,
    script:
        "../scripts/reroll_blocks.py"


rule reroll_sr_tiles:
    input:
        unpack(reroll_tile_inputs),
    output:
        marker="work/{mural}/pass{step}/reroll/tiles-{chunk}.done",
    log:
        "logs/{mural}/pass{step}/reroll-tiles-{chunk}.log",
    benchmark:
        "benchmarks/{mural}/pass{step}/reroll-tiles-{chunk}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: tile_threads
    resources:
        gpu=gpus_for,
    params:
        job=reroll_tile_params,
    script:
        "../scripts/reroll_sr_tiles.py"
