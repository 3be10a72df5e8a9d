# BLK-Stencil data: synthetic transparent ink assets + the artist's RGBA assets -> training set.


rule stencil_dataset:
    input:
        unpack(stencil_inputs),
    output:
        dataset=directory("datasets/stencil-{stencil}"),
    log:
        "logs/stencil/{stencil}.log",
    benchmark:
        "benchmarks/stencil/{stencil}.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        settings=lambda wildcards: STENCIL_SETS[wildcards.stencil],
        synthetic=STENCIL["synthetic"],
    script:
        "../scripts/build_stencil_dataset.py"


rule stencil_contact_sheet:
    input:
        dataset="datasets/stencil-{stencil}",
    output:
        sheet=report(
            "results/stencil/{stencil}_contact_sheet.png",
            caption="../report/stencil_contact_sheet.rst",
            category="BLK-Stencil",
        ),
    log:
        "logs/stencil/{stencil}_contact_sheet.log",
    benchmark:
        "benchmarks/stencil/{stencil}_contact_sheet.tsv"
    conda:
        "../envs/vips.yaml"
    script:
        "../scripts/stencil_contact_sheet.py"
