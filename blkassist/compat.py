"""Shims for third-party packages that lag behind the pinned torch stack."""

import sys
import types


def _install_functional_tensor_shim() -> None:
    # basicsr 1.4.2 imports torchvision.transforms.functional_tensor, which torchvision
    # removed; rgb_to_grayscale is the only name it uses from there.
    name = "torchvision.transforms.functional_tensor"
    if name in sys.modules:
        return
    import torchvision.transforms.functional as functional

    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = shim


def rrdbnet_class():
    """basicsr's RRDBNet, importable with current torchvision."""
    _install_functional_tensor_shim()
    from basicsr.archs.rrdbnet_arch import RRDBNet

    return RRDBNet


def realesrganer_class():
    """realesrgan's reference tiler (used only to cross-check ours)."""
    _install_functional_tensor_shim()
    from realesrgan import RealESRGANer

    return RealESRGANer


def basicsr_module(name: str):
    """A basicsr submodule (degradations, losses, metrics...), importable with current
    torchvision."""
    import importlib

    _install_functional_tensor_shim()
    return importlib.import_module(name)
