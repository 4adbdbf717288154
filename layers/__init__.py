"""Layers: the contract and registry (``layers.base``) and one module per
layer family. Importing the package imports every module in it, so each
layer registers itself; adding a layer means adding a module, nothing else."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "kernels"):
        importlib.import_module(f"{__name__}.{_module.name}")

from .base import Layer, create_layer, register, register_python  # noqa: E402,F401
