# Model weights the workflow can make itself, from files shipped in installed packages.


rule convert_realesrgan_weights:
    output:
        weights=f"{MODELS_DIR}/{{model}}.pth",
    log:
        "logs/models/convert_{model}.log",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/convert_realesrgan_weights.py"


# The kohya / ComfyUI copy of every LoRA trained here (LoRA adapters only: LoKr has no such
# layout), for ComfyUI, Forge, A1111 and kohya's scripts.
rule kohya_lora:
    input:
        lora=f"{MODELS_DIR}/{{lora}}.safetensors",
    output:
        kohya=f"{MODELS_DIR}/{{lora}}.kohya.safetensors",
    log:
        "logs/models/kohya_{lora}.log",
    wildcard_constraints:
        lora=r"(conceptor|texture|stencil)-[A-Za-z0-9][A-Za-z0-9_-]*",
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/export_kohya_lora.py"
