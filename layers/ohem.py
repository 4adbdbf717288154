"""Online hard example mining: BoxAnnotatorOHEM (R-FCN).

The layer runs the same array code on both devices (NumPy or CuPy through
``xp``): a per-image top-k by sorting, with no kernel of its own.
"""
import numpy as np

from layers.base import NoGradientLayer, register
from layers.softmax import legacy_shape
from netdef.device import array_module


@register("BoxAnnotatorOHEM")
class BoxAnnotatorOHEMLayer(NoGradientLayer):
    """Keep the ``roi_per_img`` highest-loss RoIs of each image; mark the
    others ignored.

    bottoms (Caffe's legacy 4-axis view, ``R`` RoIs, usually H = W = 1):
      rois ``(R, 5, H, W)`` or ``(R, 5)``: ``[batch_index, x1, y1, x2, y2]``;
      per-RoI loss ``(R, 1, H, W)`` or ``(R,)`` (in py-R-FCN the Eltwise sum
      of SoftmaxWithLossOHEM's and SmoothL1LossOHEM's per-RoI tops);
      labels ``(R, 1, H, W)`` or ``(R,)``;
      bbox weights ``(R, B, H, W)`` or ``(R, B)``.
    tops, shaped as the fork shapes them:
      labels_ohem ``(R, 1, H, W)``: the label of a kept RoI, else ``ignore_label``;
      bbox_weights_ohem ``(R, B, H, W)``: the weights of a kept RoI, else 0.

    ``box_annotator_ohem_param``: ``roi_per_img`` (> 0), ``ignore_label``
    (default -1). The image of a RoI is its batch index truncated to an
    integer. Within an image RoIs rank by loss, highest first; equal losses
    rank by RoI index, lower first (the fork's unstable sort leaves ties
    unspecified). Every image keeps min(roi_per_img, its RoI count) RoIs.

    No gradient flows through this layer (as in the fork): its inputs are
    treated as constants. Where a Net forces backward anyway, the bottoms'
    diffs it is asked for are set to 0.
    """

    exact_bottoms = 4
    exact_tops = 2

    def layer_setup(self, bottoms, tops):
        param = self.param.box_annotator_ohem_param
        self.roi_per_img = int(param.roi_per_img)
        if self.roi_per_img <= 0:
            raise self.definition_error(
                f"box_annotator_ohem_param.roi_per_img must be > 0, found {self.roi_per_img}")
        self.ignore_label = int(param.ignore_label)

    def reshape(self, bottoms, tops):
        rois = legacy_shape(bottoms[0].shape)
        if len(bottoms[0].shape) < 2 or rois[1] != 5:
            raise self.shape_error(0, "RoIs (R, 5) or (R, 5, H, W): [batch_index, x1, y1, x2, y2]",
                                   bottoms[0].shape)
        num, spatial = rois[0], rois[2:]
        expected = {1: "per-RoI losses", 2: "labels", 3: "bbox weights"}
        for i in (1, 2):
            if legacy_shape(bottoms[i].shape) != (num, 1) + spatial:
                raise self.shape_error(
                    i, f"{expected[i]} of shape {(num, 1) + spatial} (or ({num},)), one per RoI "
                    f"of '{self.bottom_name(0)}' {bottoms[0].shape}", bottoms[i].shape)
        weights = legacy_shape(bottoms[3].shape)
        if weights[0] != num or weights[2:] != spatial:
            raise self.shape_error(
                3, f"{expected[3]} of shape ({num}, B) + {spatial}, one row per RoI of "
                f"'{self.bottom_name(0)}' {bottoms[0].shape}", bottoms[3].shape)
        tops[0].reshape((num, 1) + spatial)
        tops[1].reshape(weights)

    def _keep(self, bottoms):
        """Boolean (R x H x W,) mask of the RoIs kept, in flat order."""
        rois = bottoms[0].data
        xp = array_module(rois)
        num = rois.shape[0]
        spatial = int(np.prod(legacy_shape(rois.shape)[2:], dtype=np.int64))
        image = rois.reshape(num, 5, spatial)[:, 0, :].reshape(-1).astype(np.int64)
        loss = bottoms[1].data.reshape(-1)
        count = loss.size
        if count == 0:
            return xp.zeros(0, dtype=bool)
        index = xp.arange(count)
        # Sort by image, then loss descending, then index: the keys are
        # unique, so the order is fully determined on either device.
        keys = xp.stack([index.astype(np.float64), -loss.astype(np.float64),
                         image.astype(np.float64)])
        order = xp.lexsort(keys)
        sorted_image = image[order]
        # Rank within the image = position minus the image's first position.
        rank = index - xp.searchsorted(sorted_image, sorted_image, side="left")
        keep = xp.zeros(count, dtype=bool)
        keep[order] = rank < self.roi_per_img
        return keep

    def forward_cpu(self, bottoms, tops):
        xp = array_module(bottoms[0].data)
        keep = self._keep(bottoms)
        labels = bottoms[2].data.reshape(-1)
        tops[0].data[...] = xp.where(keep, labels, labels.dtype.type(self.ignore_label)).reshape(
            tops[0].shape)
        num, channels = tops[1].shape[:2]
        spatial = int(np.prod(tops[1].shape[2:], dtype=np.int64))
        weights = bottoms[3].data.reshape(num, channels, spatial)
        mask = keep.reshape(num, 1, spatial)
        tops[1].data[...] = xp.where(mask, weights, 0).reshape(tops[1].shape)

    forward_gpu = forward_cpu
