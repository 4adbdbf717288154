"""The Layer base class: registry errors and the random-state contract."""
import json

import numpy as np
import pytest

from netdef import Net
from netdef.errors import NetDefinitionError

NET = """
layer { name: "noise" type: "DummyData" top: "x"
        dummy_data_param { shape { dim: 2 dim: 8 } data_filler { type: "gaussian" } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }
"""


def test_random_state_roundtrip_reproduces_the_next_draws():
    net = Net(NET, "TRAIN", dtype=np.float64, seed=4)
    net.forward()
    saved = {name: json.loads(json.dumps(layer.random_state()))
             for name, layer in net.layer_dict.items()}
    assert set(saved["noise"]) == {"generator"} and set(saved["drop"]) == {"mask_draws"}
    passes = net.draw_passes   # the draw key of a plain forward loop: (0, passes)
    first = net.forward()["y"].copy()
    net.forward()
    for name, layer in net.layer_dict.items():
        layer.set_random_state(saved[name])
    net.draw_passes = passes
    np.testing.assert_array_equal(net.forward()["y"], first)


def test_unknown_python_module_is_refused():
    text = """
    layer { name: "d" type: "Input" top: "a" input_param { shape { dim: 1 } } }
    layer { name: "p" type: "Python" bottom: "a" top: "b"
            python_param { module: "my.module" layer: "Evil" } }
    """
    with pytest.raises(NetDefinitionError, match=r"Python layer my.module.Evil is not a known.*to allow it"):
        Net(text, "TRAIN")


USER_LAYER = '''
import numpy as np

class Double:
    def setup(self, bottom, top):
        self.factor = float(self.param_str or 2)
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)
    def forward(self, bottom, top):
        top[0].data[...] = self.factor * bottom[0].data
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.factor * top[0].diff
'''

USER_NET = """
force_backward: true
layer { name: "d" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "p" type: "Python" bottom: "a" top: "b"
        python_param { module: "user_double_layer" layer: "Double" param_str: "3" } }
"""


def test_user_python_layer_runs_when_allowed(tmp_path, monkeypatch):
    (tmp_path / "user_double_layer.py").write_text(USER_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(NetDefinitionError, match=r"allow_python_modules=\['user_double_layer'\]"):
        Net(USER_NET, "TRAIN")
    net = Net(USER_NET, "TRAIN", allow_python_modules=["user_double_layer"])
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(net.forward(a=x)["b"], 3 * x)
    net.blobs["b"].diff[...] = 1
    diffs = net.backward(b=np.ones((2, 3)))
    np.testing.assert_allclose(diffs["a"], 3 * np.ones((2, 3)))


def test_allowed_python_module_that_does_not_import(tmp_path):
    text = USER_NET.replace("user_double_layer", "no_such_module_here")
    with pytest.raises(NetDefinitionError, match="cannot import Python module 'no_such_module_here'"):
        Net(text, "TRAIN", allow_python_modules=["no_such_module_here"])
