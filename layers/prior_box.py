"""Caffe-SSD's ``PriorBox``: the default boxes of one feature map.

bottoms: the feature map (N, C, H, W) and the input image (N, 3, IH, IW);
only their shapes are read. top: (1, 2, H * W * P * 4), channel 0 the
boxes ``[xmin, ymin, xmax, ymax]`` normalized by the image size, channel 1
their variances; boxes run over rows h, columns w, then the P priors of a
cell (Caffe-SSD's order).

prior_box_param (Caffe-SSD's fields and rules):
- ``aspect_ratio``: 1 first, then each given ratio r not already listed
  (within 1e-6), followed by 1 / r when ``flip`` (default true);
- per ``min_size`` m (pixels, at least one): a box m x m; then, when
  ``max_size`` is given (one per min_size, each larger), a box
  sqrt(m * M) square; then per ratio r != 1 a box m * sqrt(r) wide and
  m / sqrt(r) high. P = ratios * min sizes + max sizes;
- centres ``((w + offset) * step_w, (h + offset) * step_h)``, offset 0.5 by
  default; the step is ``step`` or ``step_h``/``step_w``, else image size /
  feature size; the image size is ``img_size`` or ``img_h``/``img_w``, else
  the second bottom's;
- ``clip`` (default false) clips the coordinates to [0, 1];
- ``variance``: none (0.1 for all four), one value (for all four) or four.

"No prior" in Caffe-SSD's rules: the ratio list always starts with 1, and
deduplication and flipping only add to it, so every ``min_size`` gives at
least its square prior and no ratio setting can leave a cell empty; the one
definition without priors is one without ``min_size`` (Caffe-SSD's "must
provide min_size"), refused here as a NetDefinitionError naming the layer.
A ratio that is not a positive finite number would give a box of no width
or no height (Caffe-SSD takes it silently): refused too. Other refused
settings: a ``min_size`` not above 0, ``max_size`` not one per min_size or
not larger than it, a variance list of a length other than 0, 1 or 4 (the
lengths Caffe-SSD accepts) or with a value not above 0, ``step`` / image
size not above 0 or given twice, and a feature map without cells.

The top depends only on shapes, so it is computed once per reshape on the
host with NumPy and copied to the layer's device; forward writes it. No
gradient (Caffe-SSD's backward is empty).
"""
import math

import numpy as np

from layers.base import NoGradientLayer, register


def aspect_ratios(given, flip):
    """Caffe-SSD's list: 1, then each new ratio (and 1 / ratio with flip)."""
    ratios = [1.0]
    for r in given:
        if any(abs(r - known) < 1e-6 for known in ratios):
            continue
        ratios.append(r)
        if flip:
            ratios.append(1.0 / r)
    return ratios


def prior_sizes(min_sizes, max_sizes, ratios):
    """Widths and heights (P,) of one cell's priors, in Caffe-SSD's order."""
    widths, heights = [], []
    for i, m in enumerate(min_sizes):
        widths.append(m)
        heights.append(m)
        if max_sizes:
            side = math.sqrt(m * max_sizes[i])
            widths.append(side)
            heights.append(side)
        for r in ratios:
            if abs(r - 1.0) < 1e-6:
                continue
            widths.append(m * math.sqrt(r))
            heights.append(m / math.sqrt(r))
    return np.array(widths), np.array(heights)


def prior_boxes(layer_hw, image_hw, step_hw, offset, widths, heights, clip):
    """Boxes (H * W * P, 4) normalized by the image size, float64."""
    (fh, fw), (ih, iw), (sh, sw) = layer_hw, image_hw, step_hw
    cy, cx = np.meshgrid((np.arange(fh) + offset) * sh, (np.arange(fw) + offset) * sw,
                         indexing="ij")
    cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)
    boxes = np.stack([(cx - widths / 2.0) / iw, (cy - heights / 2.0) / ih,
                      (cx + widths / 2.0) / iw, (cy + heights / 2.0) / ih], axis=-1)
    if clip:
        np.clip(boxes, 0.0, 1.0, out=boxes)
    return boxes.reshape(-1, 4)


@register("PriorBox")
class PriorBoxLayer(NoGradientLayer):
    """See the module docstring. bottoms: feature (N, C, H, W), image
    (N, C', IH, IW); top: (1, 2, H * W * P * 4)."""

    exact_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.prior_box_param
        self.min_sizes = [float(v) for v in p.min_size]
        self.max_sizes = [float(v) for v in p.max_size]
        self._check_sizes()
        bad = [float(r) for r in p.aspect_ratio if not (math.isfinite(r) and r > 0)]
        if bad:
            raise self.definition_error(
                f"prior_box_param.aspect_ratio {bad[0]:g} produces no prior box (a ratio "
                "must be a positive finite number: width / height of the box)")
        self.ratios = aspect_ratios([float(r) for r in p.aspect_ratio], bool(p.flip))
        self.num_priors = len(self.ratios) * len(self.min_sizes) + len(self.max_sizes)
        self.clip = bool(p.clip)
        self.offset = float(p.offset)
        self.variance = self._read_variance(p)
        self.image_hw = self._pair(p, "img_size", "img_h", "img_w")
        self.step_hw = self._pair(p, "step", "step_h", "step_w")
        self.priors = None

    def _check_sizes(self):
        if not self.min_sizes:
            raise self.definition_error(
                "prior_box_param needs at least one min_size; without one the layer "
                "produces no prior box (aspect_ratio and max_size only add boxes to each "
                "min_size's square one)")
        for m in self.min_sizes:
            if not m > 0:
                raise self.definition_error(f"prior_box_param.min_size must be > 0, found {m:g}")
        if self.max_sizes:
            if len(self.max_sizes) != len(self.min_sizes):
                raise self.definition_error(
                    f"prior_box_param has {len(self.max_sizes)} max_size values for "
                    f"{len(self.min_sizes)} min_size values; give one per min_size or none")
            for m, big in zip(self.min_sizes, self.max_sizes):
                if not big > m:
                    raise self.definition_error(
                        f"prior_box_param.max_size {big:g} must be larger than its "
                        f"min_size {m:g}")

    def _read_variance(self, p):
        values = [float(v) for v in p.variance]
        if len(values) not in (0, 1, 4):
            raise self.definition_error(
                f"prior_box_param.variance: expected 1 or 4 values (or none: 0.1), found "
                f"{len(values)}: {values}")
        if any(not v > 0 for v in values):
            raise self.definition_error(
                f"prior_box_param.variance values must be > 0, found {values}")
        return np.array(values or [0.1]) * np.ones(4)

    def _pair(self, p, single, name_h, name_w):
        """(h, w) from ``single`` or from both of ``name_h``/``name_w``;
        None when none is given (then read from the bottoms)."""
        has = [p.HasField(n) for n in (single, name_h, name_w)]
        if has[0] and (has[1] or has[2]):
            raise self.definition_error(
                f"prior_box_param: give either {single} or {name_h}/{name_w}, not both")
        if has[1] != has[2]:
            raise self.definition_error(
                f"prior_box_param: {name_h} and {name_w} go together; found only "
                f"{name_h if has[1] else name_w}")
        if not any(has):
            return None
        hw = (float(getattr(p, single)),) * 2 if has[0] else \
            (float(getattr(p, name_h)), float(getattr(p, name_w)))
        if not (hw[0] > 0 and hw[1] > 0):
            raise self.definition_error(
                f"prior_box_param: {single if has[0] else name_h + '/' + name_w} must be "
                f"> 0, found {hw}")
        return hw

    def reshape(self, bottoms, tops):
        for i, what in ((0, "feature map"), (1, "image")):
            if len(bottoms[i].shape) != 4:
                raise self.shape_error(i, f"4 axes (N, C, H, W) of the {what}", bottoms[i].shape)
        layer_hw = tuple(int(d) for d in bottoms[0].shape[2:])
        image_hw = self.image_hw or tuple(float(d) for d in bottoms[1].shape[2:])
        if min(layer_hw) < 1:
            raise self.shape_error(0, "a feature map of at least 1 x 1", bottoms[0].shape)
        step_hw = self.step_hw or (image_hw[0] / layer_hw[0], image_hw[1] / layer_hw[1])
        widths, heights = prior_sizes(self.min_sizes, self.max_sizes, self.ratios)
        boxes = prior_boxes(layer_hw, image_hw, step_hw, self.offset, widths, heights,
                            self.clip)
        values = np.stack([boxes.reshape(-1), np.tile(self.variance, len(boxes))])
        tops[0].reshape((1, 2, values.shape[1]))
        self.priors = self.device.xp.asarray(values[None], dtype=self.dtype)

    def forward_cpu(self, bottoms, tops):
        tops[0].data[...] = self.priors

    forward_gpu = forward_cpu
