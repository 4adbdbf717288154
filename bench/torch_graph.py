"""The trunk's Caffe layer list as a PyTorch module, for side-by-side benchmarks.

Imports torch at the top: import it only through
``bench.trunk_vs_pytorch.import_torch_graph``, which names the ``bench``
extra when torch is missing.

Translation (``TorchGraph(net_param)``), layer by layer, in prototxt order:

- Convolution -> ``nn.Conv2d`` with the same kernel, stride, pad, dilation,
  group and bias term;
- BatchNorm (use_global_stats) followed by the Scale that reads its top ->
  one ``nn.BatchNorm2d`` run in eval mode (``F.batch_norm`` with
  ``training=False``): running mean and variance = Caffe's sums times its
  scale factor, weight and bias = the Scale's; a BatchNorm alone gets
  weight 1, bias 0;
- ReLU -> ``relu`` (leaky with Caffe's negative_slope), in place when the
  Caffe layer is in place and nothing has read the blob since it was
  written;
- Eltwise SUM (with coeffs) / PROD / MAX; Pooling MAX with Caffe's
  ceil-mode output size (``ceil_mode=True`` follows the same rule);
- Split -> the same tensor under the new names (never written in place).

Parameters whose ParamSpec says lr_mult 0 get ``requires_grad=False``.
"""
import numpy as np
import torch
import torch.nn.functional as F

from bench.trunk_graph import blob_shapes, conv_geometry, pool_geometry, trunk_output
from netdef.device import to_numpy
from netdef.errors import NetDefinitionError


def _lr_mults(lp, count):
    """lr_mult of each of a layer's ``count`` parameter blobs (default 1)."""
    return [float(lp.param[i].lr_mult) if i < len(lp.param) else 1.0 for i in range(count)]


def _key(name):
    """A ModuleDict key for a layer name (no dots)."""
    return name.replace(".", "_")


class TorchGraph(torch.nn.Module):
    """The layer list of a NetParameter (one Input, then the trunk's layer
    types) as torch operations. ``forward(x)`` returns the last layer's top.
    ``steps`` lists (kind, layer name, bottoms, top, options)."""

    def __init__(self, net_param):
        super().__init__()
        layers = list(net_param.layer)
        if not layers or layers[0].type != "Input":
            raise NetDefinitionError("the graph must start with its Input layer")
        self.input_name = layers[0].top[0]
        self.output_name = trunk_output(net_param)
        self.modules_by_layer = torch.nn.ModuleDict()
        self.steps = []
        self._translate(layers[1:], blob_shapes(net_param))

    def _translate(self, layers, shapes):
        """Add one step per layer (a BatchNorm and the Scale reading its top
        are one step), deciding where a ReLU may run in place."""
        read_since_write, aliased = {}, set()
        index = 0
        while index < len(layers):
            lp = layers[index]
            fused = None
            if lp.type == "BatchNorm" and index + 1 < len(layers):
                nxt = layers[index + 1]
                if nxt.type == "Scale" and list(nxt.bottom) == list(lp.top):
                    fused, index = nxt, index + 1
            in_place = (list(lp.top) == list(lp.bottom[:1]) and
                        read_since_write.get(lp.bottom[0], 0) == 0 and
                        lp.bottom[0] not in aliased)
            self._add_step(lp, fused, shapes[lp.bottom[0]][1], in_place)
            for b in lp.bottom:
                read_since_write[b] = read_since_write.get(b, 0) + 1
            last = fused or lp
            for top in last.top:
                read_since_write[top] = 0
            if lp.type == "Split":
                aliased.update(lp.top)
                aliased.add(lp.bottom[0])
            index += 1

    def _add_step(self, lp, scale, channels, in_place):
        """The step (and module, if any) of layer ``lp``; ``scale``: the Scale
        layer folded into a BatchNorm; ``channels``: of the bottom."""
        name, bottoms, top = lp.name, list(lp.bottom), (scale or lp).top[0]
        if lp.type == "Convolution":
            self.modules_by_layer[_key(name)] = self._conv(lp, channels)
            self.steps.append(("conv", name, bottoms, top, None))
        elif lp.type == "BatchNorm":
            if not lp.batch_norm_param.use_global_stats:
                raise NetDefinitionError(f"layer '{name}': only BatchNorm with "
                                         "use_global_stats is translated")
            bn = torch.nn.BatchNorm2d(channels, eps=lp.batch_norm_param.eps)
            lrs = _lr_mults(scale, 2) if scale is not None else [0.0, 0.0]
            bn.weight.requires_grad_(lrs[0] != 0)
            bn.bias.requires_grad_(lrs[1] != 0 and scale.scale_param.bias_term)
            self.modules_by_layer[_key(name)] = bn.eval()
            self.steps.append(("affine", name, bottoms, top, scale and scale.name))
        elif lp.type == "ReLU":
            self.steps.append(("relu", name, bottoms, top,
                               (float(lp.relu_param.negative_slope), in_place)))
        elif lp.type == "Eltwise":
            p = lp.eltwise_param
            op = p.EltwiseOp.Name(p.operation)
            self.steps.append(("eltwise", name, bottoms, top, (op, list(p.coeff))))
        elif lp.type == "Pooling":
            p = lp.pooling_param
            if p.pool != p.MAX or p.global_pooling:
                raise NetDefinitionError(f"layer '{name}': only MAX pooling is translated")
            self.steps.append(("maxpool", name, bottoms, top, pool_geometry(p)))
        elif lp.type == "Split":
            self.steps.append(("split", name, bottoms, list(lp.top), None))
        else:
            raise NetDefinitionError(f"layer '{name}': type {lp.type} has no PyTorch "
                                     "translation here")

    @staticmethod
    def _conv(lp, channels):
        """The Conv2d of a Convolution layer, frozen where lr_mult is 0."""
        p = lp.convolution_param
        kernel, stride, pad, dilation = conv_geometry(p)
        conv = torch.nn.utils.skip_init(  # no default init: the weights are set after
            torch.nn.Conv2d, channels, int(p.num_output), kernel, stride=stride, padding=pad,
            dilation=dilation, groups=int(p.group), bias=p.bias_term)
        for param, lr in zip(conv.parameters(), _lr_mults(lp, 2)):
            param.requires_grad_(lr != 0)
        return conv

    def forward(self, x):
        """The output of the graph for input ``x`` (N, C, H, W)."""
        env = {self.input_name: x}
        for kind, name, bottoms, top, options in self.steps:
            x = env[bottoms[0]]
            if kind == "conv":
                y = self.modules_by_layer[_key(name)](x)
            elif kind == "affine":
                bn = self.modules_by_layer[_key(name)]
                y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                 training=False, eps=bn.eps)
            elif kind == "relu":
                slope, in_place = options
                y = (F.leaky_relu(x, slope, inplace=in_place) if slope
                     else F.relu(x, inplace=in_place))
            elif kind == "eltwise":
                y = _eltwise(options, [env[b] for b in bottoms])
            elif kind == "maxpool":
                kernel, stride, pad = options
                y = F.max_pool2d(x, kernel, stride, pad, ceil_mode=True)
            else:  # split
                env.update((t, x) for t in top)
                continue
            env[top] = y
        return env[self.output_name]

    # -- weights --------------------------------------------------------------
    def counterparts(self):
        """(Caffe layer name, blob index, torch parameter) for every
        learnable blob: convolution weight and bias, the Scale's weight and
        bias folded into a BatchNorm2d."""
        pairs = []
        for kind, name, _, _, scale in self.steps:
            if kind == "conv":
                module = self.modules_by_layer[_key(name)]
                pairs += [(name, i, p) for i, p in enumerate(module.parameters())]
            elif kind == "affine" and scale is not None:
                bn = self.modules_by_layer[_key(name)]
                pairs += [(scale, 0, bn.weight), (scale, 1, bn.bias)]
        return pairs

    @torch.no_grad()
    def load_from_net(self, net):
        """Copy the parameters of our Net (same layer names) into the module."""
        def tensor(blob):
            return torch.from_numpy(np.ascontiguousarray(to_numpy(blob.data)))

        for layer, index, param in self.counterparts():
            if index < len(net.params[layer]):
                param.copy_(tensor(net.params[layer][index]).reshape(param.shape))
        for kind, name, _, _, scale in self.steps:
            if kind == "affine":
                bn = self.modules_by_layer[_key(name)]
                mean, var, factor = (tensor(b).double() for b in net.params[name])
                s = float(factor.reshape(-1)[0])
                s = 0.0 if s == 0 else 1.0 / s
                bn.running_mean.copy_(mean.reshape(-1) * s)
                bn.running_var.copy_(var.reshape(-1) * s)
                if scale is None:
                    bn.weight.fill_(1.0)
                if scale is None or len(net.params[scale]) < 2:
                    bn.bias.zero_()
        return self

    @torch.no_grad()
    def finite_init(self, seed=0):
        """Parameters as ``bench.train_iteration.finite_params`` draws them:
        convolution weights of variance 1/fan-in, biases 0, BatchNorm the
        identity, Scale 0.5 (without our Net, for a process of its own)."""
        generator = torch.Generator().manual_seed(seed)
        for kind, name, _, _, _ in self.steps:
            module = self.modules_by_layer[_key(name)] if kind in ("conv", "affine") else None
            if kind == "conv":
                fan_in = max(module.weight[0].numel(), 1)
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator)
                                    * float(np.sqrt(1.0 / fan_in)))
                if module.bias is not None:
                    module.bias.zero_()
            elif kind == "affine":
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.weight.fill_(0.5)
                module.bias.zero_()
        return self


def _eltwise(options, xs):
    """Caffe's Eltwise on tensors ``xs``: SUM (with coeffs), PROD or MAX."""
    op, coeffs = options
    if op == "SUM":
        coeffs = coeffs or [1.0] * len(xs)
        y = xs[0] if coeffs[0] == 1 else coeffs[0] * xs[0]
        for c, x in zip(coeffs[1:], xs[1:]):
            y = y + x if c == 1 else y + c * x
        return y
    y = xs[0]
    for x in xs[1:]:
        y = y * x if op == "PROD" else torch.maximum(y, x)
    return y
