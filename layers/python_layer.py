"""User-written ``type: "Python"`` layers, allowed explicitly.

A prototxt can name any Python module in ``python_param``; importing it would
run its code, so the Net refuses modules it does not know unless the user
lists them: ``Net(..., allow_python_modules=["my_layers"])`` (or
``--allow-python-module my_layers`` on the command line).

The class named by ``python_param.layer`` follows pycaffe's Python-layer
contract: it is constructed without arguments, gets ``param_str`` and
``phase`` as attributes, and implements ``setup(bottom, top)``,
``reshape(bottom, top)``, ``forward(bottom, top)`` and
``backward(top, propagate_down, bottom)`` on blobs with ``.data``, ``.diff``
and ``.reshape(*shape)``. It runs on whatever device the blobs are on (its
code decides what it does with NumPy or CuPy arrays).
"""
import importlib

from layers.base import Layer, register_user_python
from netdef.errors import NetDefinitionError


def load_user_class(param):
    """Import ``python_param.module`` and return its ``layer`` class."""
    module_name, class_name = param.python_param.module, param.python_param.layer
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise NetDefinitionError(
            f"layer '{param.name}': cannot import Python module '{module_name}': {exc}") from exc
    user_class = getattr(module, class_name, None)
    if user_class is None:
        raise NetDefinitionError(
            f"layer '{param.name}': module '{module_name}' has no class '{class_name}'")
    return user_class


@register_user_python
class UserPythonLayer(Layer):
    """Adapter running a user's pycaffe-style layer class as a native layer."""

    type = "Python"

    def __init__(self, param, **kwargs):
        super().__init__(param, **kwargs)
        self.user = load_user_class(param)()
        self.user.param_str = param.python_param.param_str
        self.user.phase = self.phase
        self.user.blobs = self.blobs

    def layer_setup(self, bottoms, tops):
        self.user.setup(bottoms, tops)

    def reshape(self, bottoms, tops):
        self.user.reshape(bottoms, tops)

    def forward_cpu(self, bottoms, tops):
        self.user.forward(bottoms, tops)

    def backward_cpu(self, tops, propagate_down, bottoms):
        self.user.backward(tops, propagate_down, bottoms)

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
