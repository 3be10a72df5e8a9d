# BLK-Conceptor: a Flux.1-dev LoRA trained on the artist's training set, and concept
# sketches from prompts; the artist's picks can become mural sources.


rule train_conceptor:
    input:
        unpack(conceptor_inputs),
    output:
        lora=f"{MODELS_DIR}/conceptor-{{run}}.safetensors",
        model_card="results/conceptor/{run}/model_card.json",
    log:
        "logs/conceptor/{run}.log",
    benchmark:
        "benchmarks/conceptor/{run}.tsv"
    conda:
        "../envs/torch.yaml"
    # One thread, so it runs beside one-thread jobs on 2 cores (see rules/esrgan.smk).
    threads: 1
    resources:
        gpu=1,
    params:
        recipe=lambda wildcards: CONCEPTOR["runs"][wildcards.run]["recipe"],
        chosen_step=lambda wildcards: CONCEPTOR["runs"][wildcards.run]["chosen_step"],
        run_dir="work/conceptor/{run}",
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/train_conceptor.py"


rule generate_concepts:
    input:
        unpack(concept_inputs),
    output:
        index="results/concepts/{concept}/concepts.json",
        sheet=report(
            "results/concepts/{concept}/contact_sheet.png",
            caption="../report/concept_contact_sheet.rst",
            category="BLK-Conceptor",
            subcategory="concepts",
            labels={"concept": "{concept}", "figure": "contact sheet"},
        ),
    log:
        "logs/concepts/{concept}.log",
    conda:
        "../envs/torch.yaml"
    # One thread, so it runs beside one-thread jobs on 2 cores (see rules/esrgan.smk).
    threads: 1
    resources:
        gpu=1,
    params:
        settings=lambda wildcards: CONCEPTS[wildcards.concept],
        folder="results/concepts/{concept}",
        lock_dir=config["gpu"]["lock_dir"],
    script:
        "../scripts/generate_concepts.py"


rule pick_concept:
    input:
        index=pick_index,
    output:
        image="results/concepts/picks/{pick}.png",
        provenance="results/concepts/picks/{pick}.json",
    log:
        "logs/concepts/pick_{pick}.log",
    conda:
        "../envs/vips.yaml"
    params:
        pick=lambda wildcards: CONCEPTOR["picks"][wildcards.pick],
    script:
        "../scripts/pick_concept.py"


rule conceptor_training_report:
    input:
        model_card="results/conceptor/{run}/model_card.json",
    output:
        losses=report(
            "results/conceptor/{run}/losses.png",
            caption="../report/conceptor_losses.rst",
            category="BLK-Conceptor",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "training curves"},
        ),
        validation=report(
            "results/conceptor/{run}/validation.html",
            caption="../report/conceptor_validation_table.rst",
            category="BLK-Conceptor",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "validation table"},
        ),
    log:
        "logs/conceptor/{run}_report.log",
    conda:
        "../envs/vips.yaml"
    script:
        "../scripts/conceptor_training_report.py"
