"""Convolution (Caffe's ``Convolution`` layer): 2-D, grouped, strided,
dilated, zero-padded cross-correlation of NCHW blobs.

bottom i: (N, C, H, W) -> top i: (N, num_output, Ho, Wo), every pair with the
same weights (Caffe lets one layer convolve several bottoms of one shape).
Ho = (H + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1,
likewise Wo. Parameters: weight (num_output, C / group, kernel_h, kernel_w)
and, with ``bias_term``, bias (num_output,).

CPU: NumPy with every multiply-add inside a GEMM, per image and group, by
the strategies of ``layers/conv_plans.py`` (row-shifted columns for
stride 1, im2col for strides and small maps, Winograd F(2x2, 3x3) of
``layers/conv_winograd.py`` for the forward and data gradient of 3x3
stride-1 layers with many channels); padding copies split between
threads, and, with ``cpu_threads.SPLIT_GEMMS``, the output rows of a
large layer too (``layers/cpu_threads.py``).

GPU: Caffe's algorithm: ``im2col`` / ``col2im`` kernels of
``layers/cuda/im2col.cu`` per image and cuBLAS GEMMs through
``cupy.matmul``; a 1x1 unpadded stride-1 convolution uses the input as its
own column matrix.

All scratch (padded copies, column matrices, chunk buffers, the GPU column
buffer) comes from ``self.workspace``, which a Net shares between layers;
nothing lives from one call to the next.
"""
import numpy as np

from layers.base import Layer, register
from layers.conv_plans import make_plans
from layers.kernels import launch
from netdef.device import array_module
from netdef.fillers import fill

INT32_MAX = 2 ** 31 - 1  # Caffe keeps the geometry as int; the CUDA kernels take int


def spatial_values(layer, field, h_field, w_field, default):
    """(h, w) of ``layer``'s convolution_param from the repeated ``field`` or
    its _h/_w pair, by the rules Caffe's convolution layers share; errors
    name the layer."""
    p = layer.param.convolution_param
    repeated = getattr(p, field)
    if h_field is not None and (p.HasField(h_field) or p.HasField(w_field)):
        if len(repeated):
            raise layer.definition_error(f"give either {field} or {h_field}/{w_field}, not both")
        if default is None and not (p.HasField(h_field) and p.HasField(w_field)):
            raise layer.definition_error(f"{h_field} and {w_field} must be given together")
        # pad_h alone means pad_w 0 (Caffe); stride_h alone, stride_w 1.
        return tuple(int(getattr(p, f)) if p.HasField(f) else default
                     for f in (h_field, w_field))
    if len(repeated) == 0:
        if default is None:
            raise layer.definition_error(
                f"convolution_param needs {field} (or {h_field} and {w_field})")
        return default, default
    if len(repeated) in (1, 2):
        return int(repeated[0]), int(repeated[-1])
    raise layer.definition_error(
        f"{field} takes 1 value or 2 (one per spatial axis), found {len(repeated)}")


def read_geometry(layer):
    """Read and check the convolution_param fields Convolution and
    Deconvolution share into ``layer``: kernel, stride, pad, dilation (each
    (h, w)), num_output, group, bias_term."""
    p = layer.param.convolution_param
    layer.kernel = spatial_values(layer, "kernel_size", "kernel_h", "kernel_w", None)
    layer.stride = spatial_values(layer, "stride", "stride_h", "stride_w", 1)
    layer.pad = spatial_values(layer, "pad", "pad_h", "pad_w", 0)
    layer.dilation = spatial_values(layer, "dilation", None, None, 1)
    for name, values, low in (("kernel", layer.kernel, 1), ("stride", layer.stride, 1),
                              ("dilation", layer.dilation, 1), ("pad", layer.pad, 0)):
        if min(values) < low:
            raise layer.definition_error(f"{name} must be >= {low} on each axis, found {values}")
        if max(values) > INT32_MAX:
            raise layer.definition_error(
                f"{name} must fit a 32-bit int (at most {INT32_MAX}), found {values}")
    layer.num_output, layer.group, layer.bias_term = int(p.num_output), int(p.group), \
        bool(p.bias_term)
    if layer.num_output < 1:
        raise layer.definition_error(
            f"convolution_param.num_output must be >= 1, found {layer.num_output}")
    if layer.group < 1:
        raise layer.definition_error(f"convolution_param.group must be >= 1, found {layer.group}")
    if layer.num_output % layer.group:
        raise layer.definition_error(
            f"num_output {layer.num_output} is not divisible by group {layer.group} "
            f"(bottom '{layer.bottom_name(0)}')")


def check_bottoms(layer, bottoms):
    """The checks both convolution layers make of their bottoms (4-D, the
    channel axis, one shape for all, at least one channel, channels
    divisible by group and equal to the weights'); returns the common shape
    (N, C, H, W)."""
    first = bottoms[0].shape
    if len(first) != 4:
        raise layer.shape_error(0, "a 4-D blob (N, C, H, W)", first)
    axis = layer.param.convolution_param.axis
    if axis not in (1, -3):
        raise layer.definition_error(
            f"convolution_param.axis must be the channel axis 1 of the 4-D bottom "
            f"'{layer.bottom_name(0)}', found {axis}")
    for i, blob in enumerate(bottoms[1:], 1):
        if blob.shape != first:
            raise layer.shape_error(i, f"the shape of bottom '{layer.bottom_name(0)}' {first}",
                                    blob.shape)
    if first[1] < 1:
        raise layer.shape_error(0, "at least 1 channel (axis 1)", first)
    if first[1] % layer.group:
        raise layer.shape_error(0, f"channels divisible by group {layer.group}", first)
    if layer.blobs and first[1] != layer.channels:
        raise layer.shape_error(
            0, f"{layer.channels} channels (the weights are {layer.blobs[0].shape})", first)
    return first


def create_params(layer, weight_shape):
    """``layer.blobs``: the weight of ``weight_shape`` and, with bias_term,
    the bias (num_output,), filled by convolution_param's fillers."""
    p = layer.param.convolution_param
    weight = layer.new_param_blob(weight_shape)
    weight.data[...] = layer.device.xp.asarray(fill(p.weight_filler, weight.shape, layer.rng(0)))
    layer.blobs = [weight]
    if layer.bias_term:
        bias = layer.new_param_blob((layer.num_output,))
        bias.data[...] = layer.device.xp.asarray(fill(p.bias_filler, bias.shape, layer.rng(1)))
        layer.blobs.append(bias)


@register("Convolution")
class ConvolutionLayer(Layer):
    """Caffe's Convolution (see the module docstring for shapes).

    convolution_param: num_output, bias_term (true), kernel_size / pad /
    stride / dilation (one value, or one per spatial axis), or kernel_h/_w,
    pad_h/_w, stride_h/_w; group (1); weight_filler, bias_filler; axis (only
    the channel axis 1 of a 4-D blob).
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
        create_params(self, (self.num_output, self.channels // self.group, kh, kw))
        self._plan_key = None

    def _check_shapes(self, bottoms):
        """Validate the bottoms; return their common shape (N, C, H, W)."""
        first = check_bottoms(self, bottoms)
        _, _, h, w = first
        for axis_name, size, k, pad, dil in (("height", h, self.kernel[0], self.pad[0], self.dilation[0]),
                                             ("width", w, self.kernel[1], self.pad[1], self.dilation[1])):
            extent = dil * (k - 1) + 1
            if extent > size + 2 * pad:
                raise self.shape_error(
                    0, f"{axis_name} + 2 * pad ({size} + 2 * {pad}) at least the dilated kernel "
                       f"extent {extent}", first)
        return first

    def output_shape(self, shape):
        n, _, h, w = shape
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel, self.stride, self.pad, self.dilation
        return (n, self.num_output, (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1,
                (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1)

    @property
    def is_pointwise(self):
        """1x1, stride 1, no pad: the input is its own column matrix."""
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
        _, c, h, w = shape
        # The CPU plans hold only shapes and offsets (their buffers come
        # from the workspace), so they are made on either device.
        self.forward_plan, self.data_plan = make_plans(
            c // self.group, h, w, self.num_output // self.group, self.kernel, self.pad,
            self.stride, self.dilation)

    def scratch_bytes(self):
        """An upper estimate of the workspace scratch of one call, for the
        Net's memory budget (``netdef.memory_budget``): a padded copy of one
        image plus its whole column matrix (C * kh * kw, Ho * Wo), which is
        the GPU path's buffer; the CPU plans take chunks of it."""
        if self._plan_key is None:
            return 0
        shape, dtype = self._plan_key
        _, c, h, w = shape
        _, _, ho, wo = self.output_shape(shape)
        (kh, kw), (ph, pw) = self.kernel, self.pad
        elements = c * (h + 2 * ph) * (w + 2 * pw) + c * kh * kw * ho * wo
        return elements * np.dtype(dtype).itemsize

    # -- CPU ----------------------------------------------------------------------
    def _split(self, array):
        """Per-group slices along the first axis (contiguous views)."""
        per = array.shape[0] // self.group
        return [array[g * per:(g + 1) * per] for g in range(self.group)]

    def forward_cpu(self, bottoms, tops):
        self.forward_with(bottoms, tops, self.blobs[0].data,
                          self.blobs[1].data if self.bias_term else None)

    def forward_with(self, bottoms, tops, weight, bias, relu=False):
        """Forward with ``weight`` (O, C / group, kh, kw) and ``bias`` (O,)
        or None in place of the layer's own blobs, then ReLU when ``relu``.
        The graph plan calls it with BatchNorm and Scale folded into the
        weights; ``forward_cpu``/``forward_gpu`` with the layer's blobs.
        Either device, by the array type of the bottoms. On the CPU the
        bias and ReLU are applied chunk by chunk, while the output is in
        cache."""
        if self._on_gpu(bottoms, tops):
            with self.device.context():
                self._forward_gpu_with(bottoms, tops, weight, bias)
                if relu:
                    xp = array_module(tops[0].data)
                    for top in tops:
                        xp.maximum(top.data, 0, out=top.data)
        else:
            self._forward_cpu_with(bottoms, tops, weight, bias, relu)

    def _forward_cpu_with(self, bottoms, tops, weight, bias, relu):
        plan = self.forward_plan
        weights = self._split(weight)
        biases = self._split(bias) if bias is not None else [None] * self.group
        for bottom, top in zip(bottoms, tops):
            for n in range(bottom.shape[0]):
                for x, y, w, b in zip(self._split(bottom.data[n]), self._split(top.data[n]),
                                      weights, biases):
                    plan.forward(self.workspace, x, w, y, b, relu)

    def _gradients_needed(self, propagate_down):
        """(weight, bias, any bottom): which gradients backward computes."""
        return (self.param_needs_gradient(0),
                self.bias_term and self.param_needs_gradient(1),
                any(propagate_down))

    def backward_cpu(self, tops, propagate_down, bottoms):
        need_weight, need_bias, _ = self._gradients_needed(propagate_down)
        plan, data_plan = self.forward_plan, self.data_plan
        weights = self._split(self.blobs[0].data)
        weight_diffs = self._split(self.blobs[0].diff.reshape(self.num_output, -1))
        for k, (bottom, top) in enumerate(zip(bottoms, tops)):
            if need_bias:
                self.blobs[1].diff += top.diff.sum(axis=(0, 2, 3))
            if not (need_weight or propagate_down[k]):
                continue
            for n in range(bottom.shape[0]):
                images, diffs = self._split(bottom.data[n]), self._split(top.diff[n])
                for g in range(self.group):
                    if need_weight:
                        plan.weight_gradient(self.workspace, images[g], diffs[g], weight_diffs[g])
                    if propagate_down[k]:
                        data_plan.data_gradient(self.workspace, diffs[g], weights[g],
                                                self._split(bottom.diff[n])[g])

    # -- GPU (Caffe's im2col + GEMM; also host-run by the tests) ---------------------
    def _kernel_args(self, shape):
        _, _, h, w = shape
        _, _, ho, wo = self.output_shape(shape)
        return tuple(np.int32(v) for v in (h, w, *self.kernel, *self.pad, *self.stride,
                                           *self.dilation, ho, wo))

    def _column_buffer(self, image):
        """The workspace's GPU column matrix (C * kh * kw, Ho * Wo) for
        image (C, H, W)."""
        _, _, ho, wo = self.output_shape((1,) + image.shape)
        return self.workspace.array("gpu_columns", (image.shape[0] * self.kernel[0] * self.kernel[1],
                                                    ho * wo), image.dtype)

    def _columns(self, image):
        """Column matrix (C * kh * kw, Ho * Wo) of one image (C, H, W)."""
        if self.is_pointwise:
            return image.reshape(image.shape[0], -1)
        columns = self._column_buffer(image)
        launch("im2col.cu", "im2col", image.dtype, columns.size,
               (np.int64(columns.size), image) + self._kernel_args((1,) + image.shape)
               + (columns,))
        return columns

    def forward_gpu(self, bottoms, tops):
        self._forward_gpu_with(bottoms, tops, self.blobs[0].data,
                               self.blobs[1].data if self.bias_term else None)

    def _forward_gpu_with(self, bottoms, tops, weight, bias):
        xp = array_module(bottoms[0].data)
        weights = self._split(weight.reshape(self.num_output, -1))
        for bottom, top in zip(bottoms, tops):
            for n in range(bottom.shape[0]):
                columns = self._columns(bottom.data[n])
                out = top.data[n].reshape(self.num_output, -1)
                for w, c, o in zip(weights, self._split(columns), self._split(out)):
                    xp.matmul(w, c, out=o)
            if bias is not None:
                top.data += bias[None, :, None, None]

    def backward_gpu(self, tops, propagate_down, bottoms):
        need_weight, need_bias, _ = self._gradients_needed(propagate_down)
        xp = array_module(bottoms[0].data)
        weights = self._split(self.blobs[0].data.reshape(self.num_output, -1))
        weight_diffs = self._split(self.blobs[0].diff.reshape(self.num_output, -1))
        for k, (bottom, top) in enumerate(zip(bottoms, tops)):
            if need_bias:
                self.blobs[1].diff += top.diff.sum(axis=(0, 2, 3))
            if not (need_weight or propagate_down[k]):
                continue
            for n in range(bottom.shape[0]):
                diffs = self._split(top.diff[n].reshape(self.num_output, -1))
                if need_weight:
                    columns = self._columns(bottom.data[n])
                    for wd, d, c in zip(weight_diffs, diffs, self._split(columns)):
                        wd += xp.matmul(d, c.T)
                if propagate_down[k]:
                    self._data_gradient_gpu(xp, weights, diffs, bottom.diff[n])

    def _data_gradient_gpu(self, xp, weights, diffs, image_diff):
        """image_diff (C, H, W) from the per-group top diffs (O / g, Ho * Wo)."""
        # The column gradient W^T dy; for a pointwise convolution it is the
        # image gradient itself, otherwise it goes into the column buffer
        # (scratch) and col2im folds it back.
        target = (image_diff.reshape(image_diff.shape[0], -1) if self.is_pointwise
                  else self._column_buffer(image_diff))
        for w, d, t in zip(weights, diffs, self._split(target)):
            xp.matmul(w.T, d, out=t)
        if not self.is_pointwise:
            launch("im2col.cu", "col2im", image_diff.dtype, image_diff.size,
                   (np.int64(image_diff.size), target)
                   + self._kernel_args((1,) + image_diff.shape) + (image_diff,))
