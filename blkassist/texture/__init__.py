"""Texture-primitive training sets: crops chosen by measured texture (hatch, cross-hatch,
grain, stroke), texture-centric sidecar captions, and a review sheet."""
