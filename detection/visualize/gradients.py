"""Gradient methods: which pixels and which feature-map cells a score depends on.

    model = VisualModel("deploy.prototxt", "weights.caffemodel")
    target = model.target(image_rgb, class_name="cat")
    heat = saliency(model, image_rgb, target)        # (H, W) float32, image pixels
    heat = grad_cam(model, image_rgb, target)        # (H, W) in [0, 1]

Each method runs one forward (a detector's RoI pinned to the target's) and,
except CAM, one backward seeded with 1 at the target score (the
pre-softmax class score, ``target.blob[target.index]``) and 0 elsewhere,
starting at the layer that writes that blob. Every diff is zeroed first,
so branches that do not lead to the score (a detector's box branch)
contribute nothing, whatever an earlier pass left in them.

- ``saliency`` (Simonyan et al. 2014): ``max over channels |dS/dx|`` at
  each input pixel;
- ``guided_backprop`` (Springenberg et al. 2015) and ``deconvnet`` (Zeiler
  and Fergus 2014): the same map from a backward whose ReLUs pass
  ``dy * (x > 0) * (dy > 0)`` or ``dy * (dy > 0)`` (``Net.backward``'s
  ``relu_mode``, which also holds for ReLUs fused into other steps);
- ``grad_cam`` (Selvaraju et al. 2017): on a ``(N, C, h, w)`` blob ``A``,
  ``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of
  ``dS/dA_k``, upsampled to the image and divided by its maximum;
- ``cam`` (Zhou et al. 2016), for nets ending in global average pooling +
  InnerProduct: ``sum_k W[c, k] F_k`` over the pooled features ``F``,
  upsampled and scaled to [0, 1] by its minimum and maximum.

Maps over input pixels are cropped to the image's part of the input blob
and resized to the image (``VisualModel.to_image``).
"""
import numpy as np

from netdef.device import to_numpy
from netdef.errors import DataError

__all__ = ["saliency", "guided_backprop", "deconvnet", "grad_cam", "cam", "grad_cam_blobs",
           "default_grad_cam_blob", "gradient_ancestors"]

#: Layers CAM looks through between the global pooling and the InnerProduct.
_PASS_THROUGH = ("Flatten", "Reshape", "Dropout", "Split")


# -- the backward pass ---------------------------------------------------------------------

def _seeded_backward(model, image, target, relu_mode="normal", end=None):
    """Forward ``image`` (RoIs pinned to ``target.rois``), zero every diff,
    seed ``target`` with 1 and run backward from the score's layer down to
    layer ``end`` (None: the first). Returns the ``Prepared`` input."""
    target = model.target(image) if target is None else target
    net = model.net
    model.check_blob(target.blob)
    prepared = model.prepare(image)
    model.forward(prepared, rois=target.rois)
    shape = net.blobs[target.blob].shape
    seed = np.zeros(shape, np.float32)
    try:
        seed[tuple(target.index)] = 1.0
    except (IndexError, TypeError):
        raise DataError(f"target index {target.index} does not fit blob '{target.blob}' of "
                        f"shape {shape}") from None
    with net.device.context():
        for blob in net.blobs.values():
            blob.zero_diff()
    net.backward(start=model.producer(target.blob), end=end, relu_mode=relu_mode,
                 **{target.blob: seed})
    return prepared


def _input_gradient_map(model, image, target, relu_mode):
    prepared = _seeded_backward(model, image, target, relu_mode)
    gradient = model.blob_diff(model.input_blob)[0]              # (3, h, w)
    return model.to_image(np.abs(gradient).max(axis=0), prepared)


def saliency(model, image, target=None):
    """Simonyan et al.'s saliency: ``max_c |dS/dx_c|`` per pixel, ``(H, W)``
    float32 in the image's pixels (not normalized). ``target``: a
    ``Target`` (default: ``model.target(image)``)."""
    return _input_gradient_map(model, image, target, "normal")


def guided_backprop(model, image, target=None):
    """Guided backpropagation: ``max_c |g_c|`` of the input gradient ``g``
    when every ReLU passes back ``dy * (x > 0) * (dy > 0)``; ``(H, W)``."""
    return _input_gradient_map(model, image, target, "guided")


def deconvnet(model, image, target=None):
    """Zeiler and Fergus's deconvnet: as ``guided_backprop`` with ReLUs
    passing back ``dy * (dy > 0)`` whatever their input; ``(H, W)``."""
    return _input_gradient_map(model, image, target, "deconvnet")


# -- Grad-CAM ------------------------------------------------------------------------------

def gradient_ancestors(model, blob):
    """Names of the blobs a gradient of ``blob`` reaches (``blob``
    included): followed back through the layers' bottoms that take a
    gradient in this net (not a detector's RoIs, labels or proposals)."""
    net = model.net
    reached = {blob}
    last = model.layer_index(model.producer(blob))
    for i in range(last, -1, -1):
        lp = net.layer_params[i]
        if any(top in reached for top in lp.top):
            reached.update(b for b, down in zip(lp.bottom, net.bottom_need_backward[i]) if down)
    return reached


def grad_cam_blobs(model, score_blob=None):
    """The blobs Grad-CAM can use for ``score_blob`` (default the model's):
    4-D blobs a gradient of the score reaches, other than net inputs and
    Split copies, in the net's order."""
    score_blob = model.score_blob if score_blob is None else score_blob
    reached = gradient_ancestors(model, score_blob)
    visible = model.visible_blobs()
    return [name for name in visible if name in reached and name not in model.net.inputs
            and len(model.net.blobs[name].shape) == 4]


def _last_writer_index(model, blob):
    return model.layer_index(model.producer(blob))


def default_grad_cam_blob(model):
    """Classifier: the last 4-D blob with more than one cell feeding the
    score. Detector: the trunk's last blob, the deepest one that feeds
    both the RoI head (through a gradient) and the layer producing the RoIs."""
    candidates = grad_cam_blobs(model)
    if model.kind == "detector":
        producer = model.layer_index(model.rois_layer)
        feeding_rois = _all_ancestors(model, producer)
        candidates = [name for name in candidates if name in feeding_rois] or candidates
    else:
        spread = [name for name in candidates
                  if np.prod(model.net.blobs[name].shape[2:]) > 1]
        candidates = spread or candidates
    if not candidates:
        raise DataError(f"{model.net.source}: no convolutional (N, C, H, W) blob feeds "
                        f"'{model.score_blob}', so Grad-CAM has nothing to weigh")
    return max(candidates, key=lambda name: _last_writer_index(model, name))


def _all_ancestors(model, layer_index):
    """Blobs layer ``layer_index`` depends on, gradient or not."""
    net = model.net
    reached = set(net.layer_params[layer_index].bottom)
    for i in range(layer_index - 1, -1, -1):
        lp = net.layer_params[i]
        if any(top in reached for top in lp.top):
            reached.update(lp.bottom)
    return reached


def _checked_grad_cam_blob(model, blob, score_blob):
    valid = grad_cam_blobs(model, score_blob)
    choices = f"(Grad-CAM blobs: {', '.join(valid) or 'none'})"
    if blob not in model.net.blobs:
        raise DataError(f"{model.net.source}: the net has no blob '{blob}' {choices}")
    shape = model.net.blobs[blob].shape
    if len(shape) != 4:
        raise DataError(f"{model.net.source}: blob '{blob}' has shape {shape}, not a "
                        f"convolutional (N, C, H, W) blob {choices}")
    if blob in model.net.inputs:
        raise DataError(f"{model.net.source}: blob '{blob}' is a net input, not a feature map "
                        f"{choices}")
    if blob not in valid:
        raise DataError(f"{model.net.source}: no gradient of '{score_blob}' reaches "
                        f"blob '{blob}' {choices}")
    return blob


def _first_reader_index(model, blob):
    """The first layer reading ``blob``'s final value (after its last
    writer): backward down to it leaves ``dS/dA`` of that value in the diff
    (an in-place ReLU further down would turn it into the pre-ReLU one)."""
    last = _last_writer_index(model, blob)
    for i in range(last + 1, len(model.net.layer_params)):
        if blob in model.net.layer_params[i].bottom:
            return i
    raise DataError(f"{model.net.source}: no layer reads blob '{blob}'")


def grad_cam(model, image, target=None, blob=None):
    """Grad-CAM of ``target`` on ``blob`` (default ``default_grad_cam_blob``):
    ``(H, W)`` float32 in [0, 1] (all zeros when no cell has positive
    evidence). A blob the net lacks, one not 4-D, or one the score's
    gradient does not reach is a DataError listing the valid blobs."""
    target = model.target(image) if target is None else target
    blob = default_grad_cam_blob(model) if blob is None else \
        _checked_grad_cam_blob(model, blob, target.blob)
    reader = model.net.layer_params[_first_reader_index(model, blob)].name
    prepared = _seeded_backward(model, image, target, "normal", end=reader)
    activations = model.blob_data(blob)[0].astype(np.float64)      # (C, h, w)
    weights = model.blob_diff(blob)[0].astype(np.float64).mean(axis=(1, 2))
    heat = np.maximum(np.tensordot(weights, activations, axes=1), 0.0)
    return _scaled_to_unit(model.to_image(heat.astype(np.float32), prepared), relu=True)


def _scaled_to_unit(heat, relu):
    """``heat / max`` (Grad-CAM, non-negative) or ``(heat - min) / (max -
    min)`` (CAM); a flat map becomes zeros."""
    low = 0.0 if relu else float(heat.min())
    span = float(heat.max()) - low
    if not span > 0:
        return np.zeros_like(heat, dtype=np.float32)
    return ((heat - low) / span).astype(np.float32)


# -- CAM -----------------------------------------------------------------------------------

def _cam_layers(model):
    """``(features blob, InnerProduct layer)`` of a net whose score is an
    InnerProduct over a global average pooling; DataError otherwise."""
    net = model.net
    score_layer = net.layer_params[model.layer_index(model.score_layer)]
    need = (f"CAM needs a net ending in global average pooling + InnerProduct; "
            f"'{model.score_blob}' comes from layer '{score_layer.name}' (type "
            f"{score_layer.type})")
    if score_layer.type != "InnerProduct":
        raise DataError(f"{net.source}: {need}; use grad_cam")
    lp = net.layer_params[model.layer_index(model.producer(score_layer.bottom[0]))]
    while lp.type in _PASS_THROUGH:
        lp = net.layer_params[model.layer_index(model.producer(lp.bottom[0]))]
    if lp.type != "Pooling" or not _is_global_average(model, lp):
        raise DataError(f"{net.source}: {need}, which reads layer '{lp.name}' (type "
                        f"{lp.type}), not a global average Pooling; use grad_cam")
    return lp.bottom[0], score_layer


def _is_global_average(model, lp):
    param = lp.pooling_param
    features = model.net.blobs[lp.bottom[0]].shape
    pooled = model.net.blobs[lp.top[0]].shape
    return param.pool == param.AVE and len(features) == 4 and (
        param.global_pooling or tuple(pooled[2:]) == (1, 1))


def cam(model, image, target=None):
    """Class activation map of ``target``'s class: ``(H, W)`` float32 in
    [0, 1]. Only for nets whose score is an InnerProduct over a global
    average pooling (DataError naming the score's layer otherwise)."""
    target = model.target(image) if target is None else target
    features, score_layer = _cam_layers(model)
    weight = to_numpy(model.net.params[score_layer.name][0].data).astype(np.float64)
    if score_layer.inner_product_param.transpose:
        weight = weight.T
    prepared = model.prepare(image)
    model.forward(prepared, rois=target.rois)
    activations = model.blob_data(features)[0].astype(np.float64)   # (K, h, w)
    heat = np.tensordot(weight[target.index[1]], activations, axes=1)
    return _scaled_to_unit(model.to_image(heat.astype(np.float32), prepared), relu=False)
