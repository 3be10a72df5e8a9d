# The artist's corpus: consent-checked collections -> normalised sRGB scans + manifest.


if SYNTHETIC_CORPUS:

    rule synthesize_demo_corpus:
        output:
            corpus=directory(SYNTHETIC_CORPUS["path"]),
        log:
            "logs/demo/synthesize_demo_corpus.log",
        conda:
            "../envs/vips.yaml"
        params:
            settings=SYNTHETIC_CORPUS,
        script:
            "../scripts/synthesize_demo_corpus.py"


rule normalise_collection:
    input:
        folder=collection_folder,
    output:
        manifest="work/corpus/{collection}/manifest.tsv",
        report="work/corpus/{collection}/report.json",
    log:
        "logs/corpus/normalise_{collection}.log",
    benchmark:
        "benchmarks/corpus/normalise_{collection}.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        collection=lambda wildcards: COLLECTIONS[wildcards.collection],
        images="work/corpus/{collection}/images",
        max_pixels=MAX_SOURCE_PIXELS,
    script:
        "../scripts/normalise_collection.py"


rule build_dataset:
    input:
        unpack(dataset_inputs),
    output:
        dataset=directory("datasets/{dataset}"),
    log:
        "logs/datasets/{dataset}.log",
    benchmark:
        "benchmarks/datasets/{dataset}.tsv"
    conda:
        "../envs/vips.yaml"
    params:
        settings=lambda wildcards: DATASETS[wildcards.dataset],
    script:
        "../scripts/build_dataset.py"


rule dataset_summary:
    input:
        dataset="datasets/{dataset}",
    output:
        page=report(
            "results/datasets/{dataset}_summary.html",
            caption="../report/dataset_summary.rst",
            category="Datasets",
            labels={"dataset": "{dataset}"},
        ),
    log:
        "logs/datasets/{dataset}_summary.log",
    conda:
        "../envs/vips.yaml"
    script:
        "../scripts/dataset_summary.py"
