"""Convolution (Caffe's ``Convolution`` layer): 2-D, grouped, strided,
dilated, zero-padded cross-correlation of NCHW blobs.

bottom i: (N, C, H, W) -> top i: (N, num_output, Ho, Wo), every pair with the
same weights (Caffe lets one layer convolve several bottoms of one shape).
Ho = (H + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1,
likewise Wo. Parameters: weight (num_output, C / group, kernel_h, kernel_w)
and, with ``bias_term``, bias (num_output,).

CPU: NumPy with every multiply-add inside a GEMM (``numpy.matmul``, i.e.
OpenBLAS). Two column strategies, chosen by stride and size (measured with
``python -m bench.conv``):

- stride 1 (every 3x3 and 1x1 of ResNet) on all but small maps:
  ``_RowShiftPlan``. In the
  zero-padded image flattened to (C, Hp * Wp), the input of output pixel
  (y, x) under kernel tap (i, j) sits at ``y * Wp + x + i * dh * Wp + j * dw``.
  Computing the output on the padded width (Ho rows of Wp, the last
  Wp - Wo columns of each row being garbage that is cropped) turns each tap
  into a constant offset of one flat index. Only the kw column shifts are
  copied (kw copies of the input instead of kh * kw); the kh row shifts are
  BLAS-compatible views (row stride > length, unit column stride) into that
  copy, so the output is kh GEMMs with K = kw * C. A 1x1 unpadded
  convolution is one GEMM on the input itself, with no copy at all. Work is
  done in chunks of output rows so the shifted copy and the partial sums
  stay in cache. The data gradient of a stride-1 correlation is a stride-1
  "full" correlation of the top diff with the flipped, transposed weights
  (pad' = dilation * (k - 1) - pad), so backward reuses the same plan.
- stride > 1, and small maps: ``_ColumnPlan``, Caffe's im2col, chunked
  over output rows, with the data gradient by col2im (one strided add per
  kernel tap).

GPU: Caffe's algorithm: ``im2col`` / ``col2im`` kernels of
``layers/cuda/im2col.cu`` per image and cuBLAS GEMMs through
``cupy.matmul``; a 1x1 unpadded stride-1 convolution uses the input as its
own column matrix.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch
from netdef.device import array_module
from netdef.fillers import fill

# A chunk of work holds about this many column elements (4 MiB of float32),
# so the shifted copies and partial sums stay in L2/L3 while the GEMM
# consumes them, and has at least this many columns, so each GEMM is wide
# enough to run near full speed. Measured by ``python -m bench.conv``.
CHUNK_ELEMENTS = 1 << 20
MIN_CHUNK_COLUMNS = 1024
# A stride-1 convolution whose whole column matrix is at most this many
# elements (a small map, e.g. 14x14 or 7x7 at ImageNet size) takes the
# im2col plan: its one in-cache copy costs less than the row-shift plan's
# weight rearrangement and its wasted padded-width columns (7 of 9 used on
# a padded 7x7 map).
SMALL_COLUMNS = CHUNK_ELEMENTS


def _chunk_rows(row_elements, row_columns, rows):
    """Rows of output per chunk: ~CHUNK_ELEMENTS of columns, at least
    MIN_CHUNK_COLUMNS wide, at least 1 and at most ``rows``."""
    by_size = CHUNK_ELEMENTS // max(row_elements, 1)
    by_width = -(-MIN_CHUNK_COLUMNS // max(row_columns, 1))
    return int(min(max(by_size, by_width, 1), rows))


class _Padder:
    """Zero-pads (or, for negative pads, crops) images (C, H, W) into a
    reused buffer (C, H + 2 ph, W + 2 pw) and returns it flattened to
    (C, Hp * Wp). With no padding the input itself is returned (a view)."""

    def __init__(self, channels, height, width, pad, dtype):
        self.pad = pad
        ph, pw = pad
        self.height, self.width = height + 2 * ph, width + 2 * pw
        self.buffer = None
        if pad != (0, 0):
            # Zeroed once: only the interior is ever written, so the border
            # stays zero across calls.
            self.buffer = np.zeros((channels, self.height, self.width), dtype)
            # Destination and source ranges per axis; a negative pad crops.
            self.dst = tuple(slice(max(p, 0), max(p, 0) + n - 2 * max(-p, 0))
                             for p, n in zip(pad, (height, width)))
            self.src = tuple(slice(max(-p, 0), n - max(-p, 0))
                             for p, n in zip(pad, (height, width)))

    def __call__(self, image):
        if self.buffer is None:
            return image.reshape(image.shape[0], -1)
        self.buffer[:, self.dst[0], self.dst[1]] = image[:, self.src[0], self.src[1]]
        return self.buffer.reshape(self.buffer.shape[0], -1)


class _RowShiftPlan:
    """Stride-1 correlation of one image (C, H, W) with weights
    (O, C, kh, kw) into (O, Ho, Wo) by row-shifted GEMMs (module docstring).

    Buffers (allocated here, reused by every call): the padded image, and
    per chunk: the kw column-shifted copies, the padded-width output and top
    diff (when cropping is needed), and partial sums.
    """

    def __init__(self, channels, height, width, outputs, kernel, pad, dilation, dtype):
        kh, kw = kernel
        dh, dw = dilation
        self.channels, self.outputs = channels, outputs
        self.kernel, self.dilation = kernel, dilation
        self.padder = _Padder(channels, height, width, pad, dtype)
        hp, wp = self.padder.height, self.padder.width
        self.pitch = wp
        self.out_height = hp - (kh - 1) * dh
        self.out_width = wp - (kw - 1) * dw
        # Columns of the padded-width output that are computed: the last row
        # stops at Wo, which keeps every read inside the padded image.
        self.length = (self.out_height - 1) * wp + self.out_width
        self.row_step = dh * wp  # flat offset between kernel rows
        self.halo = (kh - 1) * self.row_step
        copies = kw > 1
        if copies or kh > 1:
            rows = _chunk_rows(kw * channels * wp, wp, self.out_height)
        else:
            rows = self.out_height  # a single GEMM on the image itself
        self.rows, self.chunk = rows, rows * wp
        self.columns = (np.empty(kw * channels * (self.chunk + self.halo), dtype)
                        if copies else None)
        # When the padded width exceeds the output width, each chunk is
        # computed into a chunk buffer and cropped into the top while still
        # in cache; likewise the top diff is laid out on the padded width
        # chunk by chunk, in a buffer whose garbage columns are zeroed once
        # and never written.
        self.cropped = self.out_width != wp
        self.output = np.empty((outputs, self.chunk), dtype) if self.cropped else None
        self.top_diff = np.zeros((outputs, self.chunk), dtype) if self.cropped else None
        self.partial = np.empty((outputs, self.chunk), dtype) if kh > 1 else None
        self.weight_partial = np.empty((outputs, kw * channels), dtype)

    def _chunks(self):
        """(first output row, rows, first flat column, columns) per chunk."""
        for y0 in range(0, self.out_height, self.rows):
            start = y0 * self.pitch
            yield y0, min(self.rows, self.out_height - y0), start, min(self.chunk, self.length - start)

    def _rows_of(self, chunk_buffer, rows):
        """The valid (O, rows, Wo) part of a padded-width chunk buffer."""
        return chunk_buffer[:, :rows * self.pitch].reshape(-1, rows, self.pitch)[:, :, :self.out_width]

    def _tap_rows(self, flat, start, count):
        """The K = kw * C operand of each kernel row i for output columns
        [start, start + count): a (kw * C, count) view per i."""
        kw, dw = self.kernel[1], self.dilation[1]
        if self.columns is None:  # kw == 1: views straight into the image
            return [flat[:, start + i * self.row_step:start + i * self.row_step + count]
                    for i in range(self.kernel[0])]
        span = count + self.halo
        shifted = self.columns[:kw * self.channels * span].reshape(kw, self.channels, span)
        for j in range(kw):
            shifted[j] = flat[:, start + j * dw:start + j * dw + span]
        matrix = shifted.reshape(kw * self.channels, span)
        return [matrix[:, i * self.row_step:i * self.row_step + count]
                for i in range(self.kernel[0])]

    def arrange(self, weight):
        """The weights (O, C, kh, kw) as the plan uses them: (kh, O, kw * C),
        K ordered (j, c) as in ``_tap_rows``. Done once per pass."""
        o, c, kh, kw = weight.shape
        return np.ascontiguousarray(weight.transpose(2, 0, 3, 1)).reshape(kh, o, kw * c)

    def arrange_flipped(self, weight):
        """For the data-gradient plan: the forward weights (C, O, kh, kw)
        (this plan's outputs are the forward's channels), transposed and
        rotated 180 degrees, arranged as ``arrange`` would, in one copy."""
        c, o, kh, kw = weight.shape
        return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(2, 1, 3, 0)).reshape(kh, o, kw * c)

    def forward(self, image, arranged, out, bias=None):
        """out (O, Ho, Wo) = correlation of image (C, H, W) with the
        weights (``arranged``), plus bias (O,) if given."""
        flat = self.padder(image)
        out2 = out.reshape(self.outputs, -1)
        for y0, rows, start, count in self._chunks():
            operands = self._tap_rows(flat, start, count)
            target = self.output[:, :count] if self.cropped else out2[:, start:start + count]
            np.matmul(arranged[0], operands[0], out=target)
            for i in range(1, len(operands)):
                partial = self.partial[:, :count]
                np.matmul(arranged[i], operands[i], out=partial)
                target += partial
            if self.cropped:
                valid = self._rows_of(self.output, rows)
                if bias is None:
                    out[:, y0:y0 + rows] = valid
                else:
                    np.add(valid, bias[:, None, None], out=out[:, y0:y0 + rows])
        if bias is not None and not self.cropped:
            out += bias[:, None, None]

    def new_accumulator(self, dtype):
        """Zeroed weight-gradient sums, in the arranged layout."""
        kh, kw = self.kernel
        return np.zeros((kh, self.outputs, kw * self.channels), dtype)

    def weight_gradient(self, image, top_diff, accumulator):
        """accumulator += d(sum(top_diff * out)) / d(arranged weights)."""
        flat = self.padder(image)
        diff2 = top_diff.reshape(self.outputs, -1)
        for y0, rows, start, count in self._chunks():
            if self.cropped:
                self._rows_of(self.top_diff, rows)[...] = top_diff[:, y0:y0 + rows]
                diff = self.top_diff[:, :count]
            else:
                diff = diff2[:, start:start + count]
            for i, operand in enumerate(self._tap_rows(flat, start, count)):
                np.matmul(diff, operand.T, out=self.weight_partial)
                accumulator[i] += self.weight_partial

    def add_weight_gradient(self, accumulator, weight_diff):
        """weight_diff (O, C, kh, kw) += the accumulated sums."""
        kh, kw = self.kernel
        weight_diff += accumulator.reshape(kh, self.outputs, kw, self.channels).transpose(1, 3, 0, 2)


class _ColumnPlan:
    """Correlation of one image (C, H, W) -> (O, Ho, Wo) with any stride,
    through an im2col column matrix built chunk by chunk (rows ordered
    (c, i, j) like the weights, so they need no rearranging), and its
    adjoint col2im for the data gradient."""

    def __init__(self, channels, height, width, outputs, kernel, pad, stride, dilation, dtype):
        kh, kw = kernel
        self.channels, self.outputs = channels, outputs
        self.height, self.width = height, width
        self.kernel, self.pad, self.stride, self.dilation = kernel, pad, stride, dilation
        self.padder = _Padder(channels, height, width, pad, dtype)
        hp, wp = self.padder.height, self.padder.width
        self.out_height = (hp - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
        self.out_width = (wp - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
        self.taps = kh * kw * channels
        self.rows = _chunk_rows(self.taps * self.out_width, self.out_width, self.out_height)
        self.columns = np.empty(self.taps * self.rows * self.out_width, dtype)
        self.weight_partial = np.empty((outputs, self.taps), dtype)
        # The data gradient accumulates into the padded image, then crops.
        self.image_diff = np.empty((channels, hp, wp), dtype)

    def _chunks(self):
        for y0 in range(0, self.out_height, self.rows):
            yield y0, min(self.rows, self.out_height - y0)

    def _tap_views(self, image3, y0, rows):
        """For each tap (i, j): the (C, rows, Wo) strided view of the padded
        image (C, Hp, Wp) that tap reads for output rows [y0, y0 + rows)."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        for i in range(kh):
            top = y0 * sh + i * dh
            for j in range(kw):
                yield (i, j), image3[:, top:top + (rows - 1) * sh + 1:sh,
                                     j * dw:j * dw + (self.out_width - 1) * sw + 1:sw]

    def _block(self, rows):
        """The chunk's column buffer as (C, kh, kw, rows, Wo)."""
        return self.columns[:self.taps * rows * self.out_width].reshape(
            self.channels, *self.kernel, rows, self.out_width)

    def _fill(self, image3, y0, rows):
        block = self._block(rows)
        for (i, j), view in self._tap_views(image3, y0, rows):
            block[:, i, j] = view
        return block.reshape(self.taps, rows * self.out_width)

    def _image3(self, image):
        return self.padder(image).reshape(self.channels, self.padder.height, self.padder.width)

    def arrange(self, weight):
        """The weights as the (O, C * kh * kw) matrix (a view)."""
        return weight.reshape(self.outputs, self.taps)

    def forward(self, image, arranged, out, bias=None):
        image3 = self._image3(image)
        out2 = out.reshape(self.outputs, -1)
        wo = self.out_width
        for y0, rows in self._chunks():
            np.matmul(arranged, self._fill(image3, y0, rows), out=out2[:, y0 * wo:(y0 + rows) * wo])
        if bias is not None:
            out += bias[:, None, None]

    def new_accumulator(self, dtype):
        return np.zeros((self.outputs, self.taps), dtype)

    def weight_gradient(self, image, top_diff, accumulator):
        image3 = self._image3(image)
        diff = top_diff.reshape(self.outputs, -1)
        wo = self.out_width
        for y0, rows in self._chunks():
            columns = self._fill(image3, y0, rows)
            np.matmul(diff[:, y0 * wo:(y0 + rows) * wo], columns.T, out=self.weight_partial)
            accumulator += self.weight_partial

    def add_weight_gradient(self, accumulator, weight_diff):
        weight_diff += accumulator.reshape(weight_diff.shape)

    def data_gradient(self, top_diff, arranged, image_diff):
        """image_diff (C, H, W) = d(sum(top_diff * out)) / d(image)."""
        diff = top_diff.reshape(self.outputs, -1)
        padded = self.image_diff
        padded.fill(0)
        wo = self.out_width
        for y0, rows in self._chunks():
            block = self._block(rows)
            np.matmul(arranged.T, diff[:, y0 * wo:(y0 + rows) * wo],
                      out=block.reshape(self.taps, rows * wo))
            # col2im: taps overlap in the image, so add tap by tap.
            for (i, j), view in self._tap_views(padded, y0, rows):
                view += block[:, i, j]
        ph, pw = self.pad
        image_diff[...] = padded[:, ph:ph + self.height, pw:pw + self.width]


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
        p = self.param.convolution_param
        if len(tops) != len(bottoms):
            raise self.definition_error(
                f"needs one top per bottom, found {len(bottoms)} bottom(s) and {len(tops)} top(s)")
        self.kernel = self._spatial("kernel_size", "kernel_h", "kernel_w", None)
        self.stride = self._spatial("stride", "stride_h", "stride_w", 1)
        self.pad = self._spatial("pad", "pad_h", "pad_w", 0)
        self.dilation = self._spatial("dilation", None, None, 1)
        for name, values, low in (("kernel", self.kernel, 1), ("stride", self.stride, 1),
                                  ("dilation", self.dilation, 1), ("pad", self.pad, 0)):
            if min(values) < low:
                raise self.definition_error(f"{name} must be >= {low} on each axis, found {values}")
        self.num_output = int(p.num_output)
        self.group = int(p.group)
        self.bias_term = bool(p.bias_term)
        if self.num_output < 1:
            raise self.definition_error(f"convolution_param.num_output must be >= 1, found {self.num_output}")
        if self.group < 1:
            raise self.definition_error(f"convolution_param.group must be >= 1, found {self.group}")
        if self.num_output % self.group:
            raise self.definition_error(
                f"num_output {self.num_output} is not divisible by group {self.group} "
                f"(bottom '{self.bottom_name(0)}')")
        channels = self._check_shapes(bottoms)[1]
        self.channels = channels
        kh, kw = self.kernel
        weight = self.new_param_blob((self.num_output, channels // self.group, kh, kw))
        weight.data[...] = self.device.xp.asarray(fill(p.weight_filler, weight.shape, self.rng(0)))
        self.blobs = [weight]
        if self.bias_term:
            bias = self.new_param_blob((self.num_output,))
            bias.data[...] = self.device.xp.asarray(fill(p.bias_filler, bias.shape, self.rng(1)))
            self.blobs.append(bias)
        self._plan_key = None

    def _spatial(self, field, h_field, w_field, default):
        """(h, w) from the repeated ``field`` or its _h/_w pair (Caffe's rules)."""
        p = self.param.convolution_param
        repeated = getattr(p, field)
        if h_field is not None and (p.HasField(h_field) or p.HasField(w_field)):
            if len(repeated):
                raise self.definition_error(f"give either {field} or {h_field}/{w_field}, not both")
            if default is None and not (p.HasField(h_field) and p.HasField(w_field)):
                raise self.definition_error(f"{h_field} and {w_field} must be given together")
            # pad_h alone means pad_w 0 (Caffe); stride_h alone, stride_w 1.
            return tuple(int(getattr(p, f)) if p.HasField(f) else default
                         for f in (h_field, w_field))
        if len(repeated) == 0:
            if default is None:
                raise self.definition_error(
                    f"convolution_param needs {field} (or {h_field} and {w_field})")
            return default, default
        if len(repeated) in (1, 2):
            return int(repeated[0]), int(repeated[-1])
        raise self.definition_error(
            f"{field} takes 1 value or 2 (one per spatial axis), found {len(repeated)}")

    def _check_shapes(self, bottoms):
        """Validate the bottoms; return their common shape (N, C, H, W)."""
        first = bottoms[0].shape
        if len(first) != 4:
            raise self.shape_error(0, "a 4-D blob (N, C, H, W)", first)
        axis = self.param.convolution_param.axis
        if axis not in (1, -3):
            raise self.definition_error(
                f"convolution_param.axis must be the channel axis 1 of the 4-D bottom "
                f"'{self.bottom_name(0)}', found {axis}")
        for i, blob in enumerate(bottoms[1:], 1):
            if blob.shape != first:
                raise self.shape_error(i, f"the shape of bottom '{self.bottom_name(0)}' {first}",
                                       blob.shape)
        n, c, h, w = first
        if c % self.group:
            raise self.shape_error(0, f"channels divisible by group {self.group}", first)
        if self.blobs and c != self.channels:
            raise self.shape_error(
                0, f"{self.channels} channels (the weights are {self.blobs[0].shape})", first)
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
        cg, og = c // self.group, self.num_output // self.group
        # The GPU path's column matrix (C * kh * kw, Ho * Wo) of one image.
        # It is also allocated for a CPU layer, where only the host-run test
        # of the GPU path touches it: numpy.empty maps pages lazily, so an
        # unused buffer costs no memory.
        self.column_buffer = (None if self.is_pointwise else self.device.xp.empty(
            (c * self.kernel[0] * self.kernel[1], out_shape[2] * out_shape[3]), self.dtype))
        self.forward_plan = self.data_plan = None
        if self.device.is_gpu:
            return
        columns = cg * self.kernel[0] * self.kernel[1] * out_shape[2] * out_shape[3]
        # A pointwise convolution takes the row-shift plan at any size: it
        # is then one GEMM on the image itself.
        if self.is_pointwise or (self.stride == (1, 1) and columns > SMALL_COLUMNS):
            self.forward_plan = _RowShiftPlan(cg, h, w, og, self.kernel, self.pad,
                                              self.dilation, self.dtype)
            # Data gradient: a stride-1 correlation of the top diff
            # (O, Ho, Wo) with the flipped weights, pad' = d * (k - 1) - pad
            # (negative pads crop), whose output is (C, H, W).
            full_pad = tuple(d * (k - 1) - p for k, p, d in zip(self.kernel, self.pad, self.dilation))
            self.data_plan = _RowShiftPlan(og, out_shape[2], out_shape[3], cg, self.kernel,
                                           full_pad, self.dilation, self.dtype)
        else:
            self.forward_plan = _ColumnPlan(cg, h, w, og, self.kernel, self.pad, self.stride,
                                            self.dilation, self.dtype)
            self.data_plan = self.forward_plan

    # -- CPU ----------------------------------------------------------------------
    def _split(self, array):
        """Per-group slices along the first axis (contiguous views)."""
        per = array.shape[0] // self.group
        return [array[g * per:(g + 1) * per] for g in range(self.group)]

    def _groups(self, array4, n):
        """Per-group (C / group, H, W) slices of image n."""
        return self._split(array4[n])

    def forward_cpu(self, bottoms, tops):
        self.forward_with(bottoms, tops, self.blobs[0].data,
                          self.blobs[1].data if self.bias_term else None)

    def forward_with(self, bottoms, tops, weight, bias, relu=False):
        """Forward with ``weight`` (O, C / group, kh, kw) and ``bias`` (O,)
        or None in place of the layer's own blobs, then ReLU when ``relu``.
        The graph plan calls it with BatchNorm and Scale folded into the
        weights; ``forward_cpu``/``forward_gpu`` with the layer's blobs.
        Either device, by the array type of the bottoms."""
        if self._on_gpu(bottoms, tops):
            with self.device.context():
                self._forward_gpu_with(bottoms, tops, weight, bias)
        else:
            self._forward_cpu_with(bottoms, tops, weight, bias)
        if relu:
            xp = array_module(tops[0].data)
            for top in tops:
                xp.maximum(top.data, 0, out=top.data)

    def _forward_cpu_with(self, bottoms, tops, weight, bias):
        plan = self.forward_plan
        weights = [plan.arrange(w) for w in self._split(weight)]
        biases = self._split(bias) if bias is not None else [None] * self.group
        for bottom, top in zip(bottoms, tops):
            for n in range(bottom.shape[0]):
                for x, y, w, b in zip(self._groups(bottom.data, n), self._groups(top.data, n),
                                      weights, biases):
                    plan.forward(x, w, y, b)

    def backward_cpu(self, tops, propagate_down, bottoms):
        plan, data_plan = self.forward_plan, self.data_plan
        weights = self._split(self.blobs[0].data)
        if data_plan is plan:  # strided: col2im with the forward's weights
            data_weights = [plan.arrange(w) for w in weights]
        else:                  # stride 1: a correlation with flipped weights
            data_weights = [data_plan.arrange_flipped(w) for w in weights]
        sums = [plan.new_accumulator(self.dtype) for _ in range(self.group)]
        for k, (bottom, top) in enumerate(zip(bottoms, tops)):
            if self.bias_term:
                self.blobs[1].diff += top.diff.sum(axis=(0, 2, 3))
            for n in range(bottom.shape[0]):
                images, diffs = self._groups(bottom.data, n), self._groups(top.diff, n)
                for g in range(self.group):
                    plan.weight_gradient(images[g], diffs[g], sums[g])
                if not propagate_down[k]:
                    continue
                for g, image_diff in enumerate(self._groups(bottom.diff, n)):
                    if data_plan is plan:
                        plan.data_gradient(diffs[g], data_weights[g], image_diff)
                    else:
                        data_plan.forward(diffs[g], data_weights[g], image_diff)
        for total, weight_diff in zip(sums, self._split(self.blobs[0].diff)):
            plan.add_weight_gradient(total, weight_diff)

    # -- GPU (Caffe's im2col + GEMM; also host-run by the tests) ---------------------
    def _kernel_args(self, shape):
        _, _, h, w = shape
        _, _, ho, wo = self.output_shape(shape)
        return tuple(np.int32(v) for v in (h, w, *self.kernel, *self.pad, *self.stride,
                                           *self.dilation, ho, wo))

    def _columns(self, image, xp):
        """Column matrix (C * kh * kw, Ho * Wo) of one image (C, H, W)."""
        if self.is_pointwise:
            return image.reshape(image.shape[0], -1)
        launch("im2col.cu", "im2col", image.dtype, self.column_buffer.size,
               (np.int64(self.column_buffer.size), image) + self._kernel_args((1,) + image.shape)
               + (self.column_buffer,))
        return self.column_buffer

    def forward_gpu(self, bottoms, tops):
        self._forward_gpu_with(bottoms, tops, self.blobs[0].data,
                               self.blobs[1].data if self.bias_term else None)

    def _forward_gpu_with(self, bottoms, tops, weight, bias):
        xp = array_module(bottoms[0].data)
        weights = self._split(weight.reshape(self.num_output, -1))
        for bottom, top in zip(bottoms, tops):
            for n in range(bottom.shape[0]):
                columns = self._columns(bottom.data[n], xp)
                out = top.data[n].reshape(self.num_output, -1)
                for w, c, o in zip(weights, self._split(columns), self._split(out)):
                    xp.matmul(w, c, out=o)
            if bias is not None:
                top.data += bias[None, :, None, None]

    def backward_gpu(self, tops, propagate_down, bottoms):
        xp = array_module(bottoms[0].data)
        weights = self._split(self.blobs[0].data.reshape(self.num_output, -1))
        weight_diffs = self._split(self.blobs[0].diff.reshape(self.num_output, -1))
        for k, (bottom, top) in enumerate(zip(bottoms, tops)):
            if self.bias_term:
                self.blobs[1].diff += top.diff.sum(axis=(0, 2, 3))
            for n in range(bottom.shape[0]):
                diffs = self._split(top.diff[n].reshape(self.num_output, -1))
                columns = self._columns(bottom.data[n], xp)
                for wd, d, c in zip(weight_diffs, diffs, self._split(columns)):
                    wd += xp.matmul(d, c.T)
                if not propagate_down[k]:
                    continue
                image_diff = bottom.diff[n]
                # The column gradient W^T dy; for a pointwise convolution it
                # is the image gradient itself, otherwise it goes into the
                # column buffer (no longer needed) and col2im folds it back.
                target = (image_diff.reshape(image_diff.shape[0], -1) if self.is_pointwise
                          else self.column_buffer)
                for w, d, t in zip(weights, diffs, self._split(target)):
                    xp.matmul(w.T, d, out=t)
                if not self.is_pointwise:
                    launch("im2col.cu", "col2im", image_diff.dtype, image_diff.size,
                           (np.int64(image_diff.size), target)
                           + self._kernel_args((1,) + image_diff.shape) + (image_diff,))
