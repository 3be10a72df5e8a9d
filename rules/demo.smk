# Demo input: a synthetic pen-and-ink artwork, so the demo needs nobody's art.


if "demo_artwork" in config:

    rule synthesize_demo_artwork:
        output:
            artwork=config["demo_artwork"]["path"],
        log:
            "logs/demo/synthesize_demo_artwork.log",
        conda:
            "../envs/vips.yaml"
        params:
            width=config["demo_artwork"]["width"],
            height=config["demo_artwork"]["height"],
            seed=config["demo_artwork"]["seed"],
            alpha=config["demo_artwork"]["alpha"],
            zoom=config["demo_artwork"]["zoom"],
        script:
            "../scripts/synthesize_demo_artwork.py"
