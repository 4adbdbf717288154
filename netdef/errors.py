"""One exception family for everything a user can get wrong.

Every message names where the problem is (file and line, layer, blob), what
was expected and what was found. Code catches ``EngineError`` to handle any
user mistake; the subclasses say which kind.
"""


class EngineError(Exception):
    """Base class of every error the engine raises for bad input."""


class ParseError(EngineError):
    """A prototxt or binary file does not parse (syntax, unknown field)."""


class NetDefinitionError(EngineError):
    """The network is not buildable: unknown layer type, missing bottom,
    wrong blob counts, bad parameter values."""


class ShapeError(EngineError):
    """A blob has a shape its consumer cannot accept."""


class WeightsError(EngineError):
    """Weights cannot be read or do not fit the net (corrupt file, shape
    mismatch)."""


class DataError(EngineError):
    """A dataset, annotation or input array is invalid."""


class DeviceError(EngineError):
    """The requested device is not available, or arrays live on the wrong one."""


class KernelError(EngineError):
    """A CUDA kernel source does not compile or cannot be loaded."""


class NumericalError(EngineError):
    """A blob turned NaN or Inf."""


class DataWarning(UserWarning):
    """An annotation or image was skipped (``on_error="skip"``) or an image
    without objects was left out; the message names file, object and reason."""


def layer_context(layer_name, layer_type):
    """The prefix every layer-level message starts with."""
    return f"layer '{layer_name}' (type {layer_type})"
