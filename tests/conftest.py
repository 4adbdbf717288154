"""Test configuration: ``gpu``-marked tests run only where CuPy sees a device."""
import pytest

from netdef.device import gpu_available


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to CuPy on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
