"""Super-resolution: Real-ESRGAN models, weight conversion and the tiled upscaler."""
