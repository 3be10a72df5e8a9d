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
