"""An SSD head inside a Net (Normalize, Permute, Flatten, Concat, PriorBox
beside it, Reshape + Softmax) passes a whole-net float64 finite-difference
check of d loss / d data and d loss / d (Normalize scale): the layers work
with the Net's splits and memory plan, not only one by one."""
import numpy as np

from netdef.net import Net

HEAD = """
force_backward: true
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
  bias_filler { type: "constant" value: 0.1 } } }
layer { name: "norm" type: "Normalize" bottom: "conv" top: "norm"
  norm_param { across_spatial: false channel_shared: false
  scale_filler { type: "gaussian" mean: 2 std: 0.5 } } }
layer { name: "loc" type: "Convolution" bottom: "norm" top: "loc"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" flatten_param { axis: 1 } }
layer { name: "conf" type: "Convolution" bottom: "norm" top: "conf"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" flatten_param { axis: 1 } }
layer { name: "prior" type: "PriorBox" bottom: "norm" bottom: "data" top: "prior"
  prior_box_param { min_size: 2 max_size: 4 aspect_ratio: 2 flip: false } }
layer { name: "conf_reshape" type: "Reshape" bottom: "conf_flat" top: "conf_reshape"
  reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax"
  softmax_param { axis: 2 } }
layer { name: "conf_out" type: "Flatten" bottom: "conf_softmax" top: "conf_out" }
layer { name: "both" type: "Concat" bottom: "loc_flat" bottom: "conf_out" top: "both"
  concat_param { axis: 1 } }
layer { name: "loss" type: "Reduction" bottom: "both" top: "loss" loss_weight: 1
  reduction_param { operation: SUMSQ } }
"""


def loss(net, data):
    return float(net.forward(data=data)["loss"])


def test_ssd_head_whole_net_gradient():
    net = Net(HEAD, "TRAIN", dtype=np.float64, seed=3)
    assert net.blobs["prior"].shape == (1, 2, 6 * 6 * 3 * 4)
    assert net.blobs["both"].shape == (2, 6 * 6 * 2 * 4 + 6 * 6 * 6)
    data = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    loss(net, data)
    net.backward()
    analytic = net.blobs["data"].diff.copy()
    scale_grad = net.params["norm"][0].diff.copy()
    rng = np.random.default_rng(1)
    eps = 1e-6
    for index in zip(*(rng.integers(0, d, 12) for d in data.shape)):
        plus, minus = data.copy(), data.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (loss(net, plus) - loss(net, minus)) / (2 * eps)
        np.testing.assert_allclose(analytic[index], numeric, rtol=1e-5, atol=1e-7)
    scale = net.params["norm"][0].data
    for c in range(scale.shape[0]):
        saved = scale[c]
        scale[c] = saved + eps
        up = loss(net, data)
        scale[c] = saved - eps
        down = loss(net, data)
        scale[c] = saved
        np.testing.assert_allclose(scale_grad[c], (up - down) / (2 * eps), rtol=1e-5, atol=1e-7)
