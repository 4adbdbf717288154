"""Deconvolution (Caffe's ``Deconvolution`` layer): the transposed
convolution, i.e. the gradient of a Convolution with respect to its input
used as a forward pass (learned upsampling, as in FCN).

bottom i: (N, C, H, W) -> top i: (N, num_output, Ho, Wo), every pair with the
same weights. Per spatial axis
Ho = stride_h * (H - 1) + dilation_h * (kernel_h - 1) + 1 - 2 * pad_h.
Parameters, at Caffe's shapes so ``.caffemodel`` weights load: weight
(C, num_output / group, kernel_h, kernel_w) (input channels first, unlike
Convolution) and, with ``bias_term``, bias (num_output,).

The layer is a Convolution run backwards: seen as a Convolution from the
top (num_output channels, Ho x Wo) to the bottom (C channels, H x W) with
the same weights (C, num_output / group, kh, kw), its forward is that
Convolution's data gradient, its data gradient is that Convolution's
forward, and its weight gradient is that Convolution's weight gradient with
the roles of image and top diff swapped. Both devices reuse Convolution's
machinery for exactly this geometry: on the CPU the per-image, per-group
plans of ``layers/conv_plans.py``; on the GPU the ``im2col`` / ``col2im``
kernels of ``layers/cuda/im2col.cu`` and GEMMs through ``cupy.matmul``
(Caffe's algorithm). Scratch comes from ``self.workspace``.
"""
import numpy as np

from layers.base import Layer, register
from layers.conv import check_bottoms, create_params, read_geometry
from layers.conv_plans import make_plans
from layers.kernels import launch
from netdef.device import array_module


@register("Deconvolution")
class DeconvolutionLayer(Layer):
    """Caffe's Deconvolution (see the module docstring for shapes).

    convolution_param, read as Convolution reads it: num_output, bias_term
    (true), kernel_size / pad / stride / dilation (one value, or one per
    spatial axis), or kernel_h/_w, pad_h/_w, stride_h/_w; group (1);
    weight_filler, bias_filler; axis (only the channel axis 1 of a 4-D blob).
    """

    min_bottoms = 1
    min_tops = 1

    def layer_setup(self, bottoms, tops):
        if len(tops) != len(bottoms):
            raise self.definition_error(
                f"needs one top per bottom, found {len(bottoms)} bottom(s) and {len(tops)} top(s)")
        read_geometry(self)
        self.channels = self._check_shapes(bottoms)[1]
        kh, kw = self.kernel
        # Caffe's deconvolution weights put the input channels first.
        create_params(self, (self.channels, self.num_output // self.group, kh, kw))
        self._plan_key = None

    def _check_shapes(self, bottoms):
        """Validate the bottoms; return their common shape (N, C, H, W)."""
        first = check_bottoms(self, bottoms)
        out = self.output_shape(first)
        if min(first[2:]) < 1 or min(out[2:]) < 1:
            raise self.shape_error(
                0, f"a map giving a positive output size stride * (in - 1) + dilation * "
                   f"(kernel - 1) + 1 - 2 * pad (here (height, width) {out[2:]})", first)
        return first

    def output_shape(self, shape):
        """Top shape (N, num_output, Ho, Wo) for bottom ``shape`` (N, C, H, W)."""
        n, _, h, w = shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.pad, self.dilation
        return (n, self.num_output, sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph,
                sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw)

    @property
    def is_pointwise(self):
        """1x1, stride 1, no pad: an image is its own column matrix."""
        return self.kernel == (1, 1) and self.stride == (1, 1) and self.pad == (0, 0)

    def reshape(self, bottoms, tops):
        shape = self._check_shapes(bottoms)
        out_shape = self.output_shape(shape)
        for top in tops:
            top.reshape(out_shape)
        key = (shape, self.dtype)
        if key == self._plan_key:
            return
        self._plan_key = key
        # The Convolution from the top to the bottom, per group: its
        # forward plan is this layer's data gradient, its data-gradient
        # plan this layer's forward. Plans hold shapes only, so they are
        # made on either device.
        self.conv_plan, self.transposed_plan = make_plans(
            self.num_output // self.group, out_shape[2], out_shape[3], self.channels // self.group,
            self.kernel, self.pad, self.stride, self.dilation)

    def _split(self, array):
        """Per-group slices along the first axis (contiguous views)."""
        per = array.shape[0] // self.group
        return [array[g * per:(g + 1) * per] for g in range(self.group)]

    def _gradients_needed(self):
        """(weight, bias): which parameter gradients backward computes."""
        return self.param_needs_gradient(0), self.bias_term and self.param_needs_gradient(1)

    # -- CPU ----------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        weights = self._split(self.blobs[0].data)
        for bottom, top in zip(bottoms, tops):
            # One GEMM-sized step per image and group, as Convolution does.
            for n in range(bottom.shape[0]):
                for x, y, w in zip(self._split(bottom.data[n]), self._split(top.data[n]), weights):
                    self.transposed_plan.data_gradient(self.workspace, x, w, y)
            if self.bias_term:
                top.data += self.blobs[1].data[None, :, None, None]

    def backward_cpu(self, tops, propagate_down, bottoms):
        need_weight, need_bias = self._gradients_needed()
        weights = self._split(self.blobs[0].data)
        weight_diffs = self._split(self.blobs[0].diff.reshape(self.channels, -1))
        for k, (bottom, top) in enumerate(zip(bottoms, tops)):
            if need_bias:
                self.blobs[1].diff += top.diff.sum(axis=(0, 2, 3))
            if not (need_weight or propagate_down[k]):
                continue
            for n in range(bottom.shape[0]):
                images, diffs = self._split(bottom.data[n]), self._split(top.diff[n])
                for g in range(self.group):
                    if need_weight:
                        # The Convolution's weight gradient, with the top
                        # diff as its image and the bottom as its top diff.
                        self.conv_plan.weight_gradient(self.workspace, diffs[g], images[g],
                                                       weight_diffs[g])
                    if propagate_down[k]:
                        self.conv_plan.forward(self.workspace, diffs[g], weights[g],
                                               self._split(bottom.diff[n])[g])

    # -- GPU (Caffe's im2col + GEMM; also host-run by the tests) ---------------------
    def _kernel_args(self, bottom_shape):
        """im2col.cu's geometry arguments: the image is a top map (Ho, Wo),
        the column grid a bottom map (H, W)."""
        _, _, h, w = bottom_shape
        _, _, ho, wo = self.output_shape(bottom_shape)
        return tuple(np.int32(v) for v in (ho, wo, *self.kernel, *self.pad, *self.stride,
                                           *self.dilation, h, w))

    def _column_buffer(self, top_map, bottom_map):
        """The workspace's GPU column matrix (num_output * kh * kw, H * W)
        between a top map (num_output, Ho, Wo) and a bottom map (C, H, W)."""
        rows = top_map.shape[0] * self.kernel[0] * self.kernel[1]
        return self.workspace.array("gpu_columns", (rows, bottom_map[0].size), top_map.dtype)

    def forward_gpu(self, bottoms, tops):
        xp = array_module(bottoms[0].data)
        weights = self._split(self.blobs[0].data.reshape(self.channels, -1))
        for bottom, top in zip(bottoms, tops):
            for n in range(bottom.shape[0]):
                image, out = bottom.data[n], top.data[n]
                inputs = self._split(image.reshape(image.shape[0], -1))
                # Columns W^T x per group, folded into the top by col2im; a
                # pointwise layer's columns are the top map itself.
                target = (out.reshape(out.shape[0], -1) if self.is_pointwise
                          else self._column_buffer(out, image))
                for w, x, t in zip(weights, inputs, self._split(target)):
                    xp.matmul(w.T, x, out=t)
                if not self.is_pointwise:
                    launch("im2col.cu", "col2im", out.dtype, out.size,
                           (np.int64(out.size), target) + self._kernel_args(bottom.shape) + (out,))
            if self.bias_term:
                top.data += self.blobs[1].data[None, :, None, None]

    def _top_columns(self, top_diff_map, bottom_map, bottom_shape):
        """Column matrix (num_output * kh * kw, H * W) of one top diff map."""
        if self.is_pointwise:
            return top_diff_map.reshape(top_diff_map.shape[0], -1)
        columns = self._column_buffer(top_diff_map, bottom_map)
        launch("im2col.cu", "im2col", columns.dtype, columns.size,
               (np.int64(columns.size), top_diff_map) + self._kernel_args(bottom_shape) + (columns,))
        return columns

    def backward_gpu(self, tops, propagate_down, bottoms):
        need_weight, need_bias = self._gradients_needed()
        xp = array_module(bottoms[0].data)
        weights = self._split(self.blobs[0].data.reshape(self.channels, -1))
        weight_diffs = self._split(self.blobs[0].diff.reshape(self.channels, -1))
        for k, (bottom, top) in enumerate(zip(bottoms, tops)):
            if need_bias:
                self.blobs[1].diff += top.diff.sum(axis=(0, 2, 3))
            if not (need_weight or propagate_down[k]):
                continue
            for n in range(bottom.shape[0]):
                image = bottom.data[n]
                columns = self._split(self._top_columns(top.diff[n], image, bottom.shape))
                inputs = self._split(image.reshape(image.shape[0], -1))
                if need_weight:
                    for wd, x, c in zip(weight_diffs, inputs, columns):
                        wd += xp.matmul(x, c.T)
                if propagate_down[k]:
                    image_diff = bottom.diff[n].reshape(image.shape[0], -1)
                    for w, c, d in zip(weights, columns, self._split(image_diff)):
                        xp.matmul(w, c, out=d)
