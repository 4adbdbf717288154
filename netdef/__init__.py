"""netdef: networks declared in Caffe prototxt, built and run on NumPy/CuPy.

pycaffe-style entry points::

    import netdef
    netdef.set_mode_cpu()
    net = netdef.Net("deploy.prototxt", netdef.TEST, weights="model.caffemodel")
"""
from .device import CPU, Device, set_device, set_mode_cpu, set_mode_gpu  # noqa: F401
from .errors import (DataError, DeviceError, EngineError, KernelError,  # noqa: F401
                     NetDefinitionError, NumericalError, ParseError, ShapeError, WeightsError)


def __getattr__(name):
    """``netdef.Net``, ``netdef.TRAIN`` and ``netdef.TEST``, imported on first
    use: the Net sits above the layers, which import netdef's low-level
    modules, so importing the package must not import the Net."""
    if name in ("Net", "TRAIN", "TEST"):
        from . import net
        return getattr(net, name)
    raise AttributeError(f"module 'netdef' has no attribute {name!r}")
