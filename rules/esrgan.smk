# BLK-Upscale SR: fine-tune Real-ESRGAN x4plus on the artist's scans. The export is an
# official-layout .pth that a mural uses with `model: esrgan:RUN`.


rule train_esrgan:
    input:
        unpack(esrgan_inputs),
    output:
        weights=f"{MODELS_DIR}/esrgan-{{run}}.pth",
        model_card="results/esrgan/{run}/model_card.json",
        validation_csv="results/esrgan/{run}/validation.csv",
        validation_plot=report(
            "results/esrgan/{run}/validation.png",
            caption="../report/esrgan_validation.rst",
            category="Real-ESRGAN",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "validation curves"},
        ),
    log:
        "logs/esrgan/{run}.log",
    benchmark:
        "benchmarks/esrgan/{run}.tsv"
    conda:
        "../envs/torch.yaml"
    # One thread: a two-thread job waits for both cores, so on the demo's 2 cores it could
    # not start beside the Stencil chain's one-thread jobs (work serialised: 7 min); on a
    # GPU the CPU threads hardly matter.
    threads: 1
    resources:
        gpu=1,
    params:
        settings=lambda wildcards: ESRGAN_RUNS[wildcards.run],
        run_dir="work/esrgan/{run}",
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/train_esrgan.py"


rule esrgan_training_report:
    input:
        model_card="results/esrgan/{run}/model_card.json",
        validation_csv="results/esrgan/{run}/validation.csv",
    output:
        losses=report(
            "results/esrgan/{run}/losses.png",
            caption="../report/esrgan_losses.rst",
            category="Real-ESRGAN",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "training losses"},
        ),
        validation=report(
            "results/esrgan/{run}/validation.html",
            caption="../report/esrgan_validation_table.rst",
            category="Real-ESRGAN",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "validation table"},
        ),
    log:
        "logs/esrgan/{run}_report.log",
    conda:
        "../envs/vips.yaml"
    params:
        run_dir="work/esrgan/{run}",
    script:
        "../scripts/esrgan_training_report.py"
