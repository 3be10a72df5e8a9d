# Input functions of BLK-Conceptor (rules/conceptor.smk).


def conceptor_inputs(wildcards):
    dataset = CONCEPTOR["runs"][wildcards.run]["dataset"]
    return {"dataset": f"datasets/{dataset}", "model": FLUX_MODEL}


def concept_inputs(wildcards):
    run = CONCEPTOR["concepts"][wildcards.concept]["run"]
    lora = [f"{MODELS_DIR}/conceptor-{run}.safetensors"] if run else []
    return {"model": FLUX_MODEL, "lora": lora}


def pick_index(wildcards):
    concept = CONCEPTOR["picks"][wildcards.pick]["concept"]
    return f"results/concepts/{concept}/concepts.json"
