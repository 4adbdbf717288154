"""netdef: networks declared in Caffe prototxt, built and run on NumPy/CuPy.

pycaffe-style entry points::

    import netdef
    netdef.set_mode_cpu()
    net = netdef.Net("deploy.prototxt", netdef.TEST, weights="model.caffemodel")
"""
from .device import CPU, Device, set_device, set_mode_cpu, set_mode_gpu  # noqa: F401
from .errors import (DataError, DeviceError, EngineError, KernelError,  # noqa: F401
                     NetDefinitionError, NumericalError, ParseError, ShapeError, WeightsError)
from .net import TEST, TRAIN, Net  # noqa: F401
