"""The graph plan: which layers run as one fused step (``layers.fused``).

Made once when the Net is built, after shape inference and the backward
plan, and recorded in ``net.build_log``. Each step covers one layer or a
run of adjacent layers (``step.indices``) and has ``forward()`` and
``backward(relu_mode="normal")`` (the ReLU rule of the call, applied to
ReLU layers and to ReLUs fused into a step alike). A fusion is made only
where every blob keeps its Caffe meaning: the fused layers work in place
on one blob, so the blob only ever showed the chain's last value; frozen
means every parameter of the layer has lr_mult 0 (BatchNorm's statistics
always are).

    steps, decisions = make_steps(net)          # net: a built Net
    steps, decisions = make_steps(net, fuse=False)  # one step per layer
"""
from layers.fused import FoldedConvolution, FrozenAffine, SharedSplit, SumReLU


class LayerStep:
    """One layer run as itself."""

    def __init__(self, net, index):
        self.indices = (index,)
        self.layer = net.layers[index]
        self.bottoms, self.tops = net.bottom_blobs[index], net.top_blobs[index]
        self.propagate_down = net.bottom_need_backward[index]
        self.need_backward = net.layer_need_backward[index]

    def forward(self):
        self.layer.reshape(self.bottoms, self.tops)
        self.layer.forward(self.bottoms, self.tops)

    def backward(self, relu_mode="normal"):
        """``relu_mode`` (``layers.neuron.RELU_MODES``) applies to a ReLU."""
        if not self.need_backward:
            return
        if self.layer.type == "ReLU":
            self.layer.backward_in_mode(self.tops, self.propagate_down, self.bottoms, relu_mode)
        else:
            self.layer.backward(self.tops, self.propagate_down, self.bottoms)


def make_steps(net, fuse=True):
    """The ordered steps of ``net`` and the plan's decisions (strings)."""
    steps, decisions, i = [], [], 0
    while i < len(net.layers):
        step = _fused_step(net, i) if fuse else None
        fused = step is not None
        step = step or LayerStep(net, i)
        step.label = " + ".join(net.layer_params[k].name for k in step.indices)
        if fused:
            decisions.append(f"plan: {step.label} run as one step ({type(step).__name__})")
        steps.append(step)
        i = step.indices[-1] + 1
    return steps, decisions


def _fused_step(net, i):
    kind = net.layer_params[i].type
    if kind == "Convolution":
        return _folded_convolution(net, i)
    if kind in ("BatchNorm", "Scale"):
        return _frozen_affine(net, i)
    if kind == "Eltwise":
        return _sum_relu(net, i)
    if kind == "Split":
        return _shared_split(net, i)
    return None


def _in_place_on(net, j, blob):
    """Layer ``j`` exists, reads and writes only ``blob``, and is no loss."""
    return (j < len(net.layers) and len(net.bottom_blobs[j]) == 1
            and len(net.top_blobs[j]) == 1 and net.bottom_blobs[j][0] is blob
            and net.top_blobs[j][0] is blob and not any(net.loss_weights[j]))


def _is_plain_relu_on(net, j, blob):
    """Layer ``j`` is a ReLU without negative slope in place on ``blob``."""
    return (_in_place_on(net, j, blob) and net.layer_params[j].type == "ReLU"
            and net.layers[j].negative_slope == 0)


def _is_frozen_affine(net, j):
    layer = net.layers[j]
    if len(net.bottom_blobs[j][0].shape) < 2:
        return False  # the fused kernels work per channel on (N, C, ...)
    if layer.type == "BatchNorm":
        return layer.use_global_stats
    if layer.type == "Scale":
        channels = net.bottom_blobs[j][0].shape[1]
        frozen = len(layer.param_propagate_down) == len(layer.blobs) and \
            not any(layer.param_propagate_down)
        axis = layer.param.scale_param.axis
        return frozen and axis in (1, -len(net.bottom_blobs[j][0].shape)) and \
            layer.blobs[0].shape == (channels,)
    return False


def _chain(net, start, blob):
    """Indices of the frozen affine layers in place on ``blob`` from
    ``start`` on, and whether a ReLU (slope 0) in place follows them."""
    affine, j = [], start
    while _in_place_on(net, j, blob) and net.layer_params[j].type in ("BatchNorm", "Scale") \
            and _is_frozen_affine(net, j):
        affine.append(j)
        j += 1
    relu = _is_plain_relu_on(net, j, blob)
    return affine, relu


def _folded_convolution(net, i):
    conv = net.layers[i]
    if len(net.bottom_blobs[i]) != 1 or any(net.loss_weights[i]):
        return None
    top = net.top_blobs[i][0]
    affine, relu = _chain(net, i + 1, top)
    if not affine and not relu:
        return None
    indices = [i] + affine + ([affine[-1] + 1 if affine else i + 1] if relu else [])
    step = FoldedConvolution(
        conv, [net.layers[j] for j in affine], relu, net.bottom_blobs[i], top,
        net.bottom_need_backward[i], _any_backward(net, indices), net.layer_need_backward[i])
    step.indices = tuple(indices)
    return step


def _frozen_affine(net, i):
    blob = net.bottom_blobs[i][0] if net.bottom_blobs[i] else None
    if blob is None:
        return None
    affine, relu = _chain(net, i, blob)
    if not affine:
        return None
    indices = affine + ([affine[-1] + 1] if relu else [])
    step = FrozenAffine([net.layers[j] for j in affine], relu, blob,
                        _any_backward(net, indices))
    step.indices = tuple(indices)
    return step


def _sum_relu(net, i):
    eltwise = net.layers[i]
    bottoms, tops = net.bottom_blobs[i], net.top_blobs[i]
    if eltwise.operation != "SUM" or len(bottoms) != 2 or any(net.loss_weights[i]):
        return None
    top = tops[0]
    relu = _is_plain_relu_on(net, i + 1, top)
    indices = [i, i + 1] if relu else [i]
    step = SumReLU(eltwise, relu, bottoms, top, net.bottom_need_backward[i],
                   _any_backward(net, indices))
    step.indices = tuple(indices)
    return step


def _shared_split(net, i):
    bottom, tops = net.bottom_blobs[i][0], net.top_blobs[i]
    shared = {id(bottom)} | {id(t) for t in tops}
    for j in range(i + 1, len(net.layers)):
        if any(id(t) in shared for t in net.top_blobs[j]):
            return None  # a later layer writes one in place: the tops need copies
    step = SharedSplit(net.layers[i], bottom, tops, net.bottom_need_backward[i],
                       net.layer_need_backward[i])
    step.indices = (i,)
    return step


def _any_backward(net, indices):
    return any(net.layer_need_backward[k] for k in indices)
