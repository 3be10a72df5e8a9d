"""BLK-Upscale diffusion path: tiled Flux img2img refinement of SR canvases."""
