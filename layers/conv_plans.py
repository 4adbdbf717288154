"""CPU strategies of the Convolution layer (layers/conv.py): one image
(C, H, W) of one group at a time, every multiply-add inside a GEMM
(``numpy.matmul``, i.e. OpenBLAS), all scratch from a ``Workspace``
(layers/workspace.py) so that layers can share it.

- ``ShiftPlan``, stride 1 (every 3x3 and 1x1 of ResNet) on all but small
  maps. In the zero-padded image flattened to (C, Hp * Wp), the input of
  output pixel (y, x) under kernel tap (i, j) sits at
  ``y * Wp + x + i * dh * Wp + j * dw``. Computing the output on the padded
  width (Ho rows of Wp, the last Wp - Wo columns of each row being garbage
  that is cropped) turns each tap into a constant offset of one flat index,
  so every copy is of long contiguous rows (a true im2col copies rows of
  only Wo elements, which is slower). Forward: only the kw column shifts
  are copied; the kh row shifts are BLAS-compatible views (row stride >
  length) into that copy, so each chunk is kh GEMMs with K = kw * C whose
  partial sums are added (fewer copies than one GEMM over all kh * kw
  shifts, which matters most for few output channels). Weight gradient:
  all kh * kw shifts are copied, rows ordered (c, i, j) like the weights,
  and each chunk is one GEMM (a product with the kh strided views as the
  reduction operand runs at half the GEMM rate). A 1x1 convolution uses the
  (padded) image as its own column matrix. The data gradient of a stride-1
  correlation is a stride-1 "full" correlation of the top diff with the
  flipped, transposed weights (pad' = dilation * (k - 1) - pad; negative
  pads crop): the same plan.
- ``ColumnPlan``, stride > 1, and small maps: Caffe's im2col, chunked over
  output rows, with the data gradient by col2im (one strided add per tap).
- ``WinogradPlan`` (layers/conv_winograd.py), Winograd F(2x2, 3x3), for
  the forward and data gradient of the 3x3 stride-1 layers with many
  channels (the rule at ``WINOGRAD_MIN_CHANNELS``); their weight gradient
  stays on the ShiftPlan's GEMM.

Work is chunked over output rows so that a chunk's columns and output stay
in cache while the GEMM consumes them and the bias and ReLU are applied
while the output is still in cache. The padded copy of a large image is
made on the BLAS's threads (``layers.cpu_threads.split_pass``). With
``cpu_threads.SPLIT_GEMMS`` (off by default: see there) the rows of a
large layer are shared out between the threads first: each thread copies,
multiplies (a one-thread GEMM) and applies the epilogue for its own rows. Where the column matrix is the
image itself (an unpadded 1x1), the weight gradient and the forward are
one GEMM over the whole image, the forward's bias and ReLU one pass after
it.
"""
import numpy as np

from layers.conv_winograd import WinogradPlan
from layers.cpu_threads import split_pass, split_work, worth_splitting

# A chunk of work holds about this many column elements (4 MiB of float32)
# and has at least this many columns, so each GEMM is wide enough to run
# near full speed. Measured by ``python -m bench.conv``.
CHUNK_ELEMENTS = 1 << 20
MIN_CHUNK_COLUMNS = 1024
# A stride-1 convolution whose whole column matrix is at most this many
# elements (a small map, e.g. 14x14 or 7x7 at ImageNet size) takes the
# im2col plan: on a padded 7x7 map the shift plan would waste 2 of 9 columns.
SMALL_COLUMNS = CHUNK_ELEMENTS
# A 3x3 stride-1 layer on a map past SMALL_COLUMNS with at least this many
# input and output channels takes Winograd F(2x2, 3x3). It does 16 / 36 of
# the GEMM work, plus transforms that cost O((C + O) * tiles), so it pays
# where C * O / (C + O) is large. Measured on the 2-core development
# machine (ms forward, ShiftPlan -> Winograd alternated in one run, medians;
# ``python -m bench.conv`` prints this table):
#   res4 3x3 256->256 38x63:     17.1 -> 13.9, 21.0 -> 16.3, 23.0 -> 18.7
#   res5 3x3 d2 512->512 38x63:  77.5 -> 60.1, 81.4 -> 74.4, 71.2 -> 58.6
#   res3 3x3 128->128 75x125:    19.3 -> 17.9, 26.4 -> 18.6, 21.5 -> 22.4
#   res2 3x3 64->64 150x250:     22.9 -> 23.3, 39.0 -> 33.1, 26.8 -> 27.6
# so 256 and up (res4, res5: 1.2-1.3x); res3 gains in some runs and loses
# in others (its 128-deep GEMMs run slower), res2 does not gain.
# Rechecked with the rows split between threads (layers.cpu_threads), by
# CPU time pinned to one core (robust to other jobs): a layer alone, its
# input and weights hot in cache, Winograd took 0.79x (res2) and 0.72x
# (res3) of the ShiftPlan's time (9 alternated rounds); but the whole trunk
# forward with the threshold at 64 took 1.003x of its time at 256 (10
# alternated rounds, outputs equal to 5e-7): in the trunk the input comes
# from memory, and Winograd's V and M (4x the input and output) add the
# traffic that its fewer multiply-adds save. So the threshold stays.
WINOGRAD_MIN_CHANNELS = 256


def _chunk_rows(row_elements, row_columns, rows):
    """Rows of output per chunk: ~CHUNK_ELEMENTS of columns, at least
    MIN_CHUNK_COLUMNS wide, at least 1 and at most ``rows``."""
    by_size = CHUNK_ELEMENTS // max(row_elements, 1)
    by_width = -(-MIN_CHUNK_COLUMNS // max(row_columns, 1))
    return int(min(max(by_size, by_width, 1), rows))


def make_plans(channels, height, width, outputs, kernel, pad, stride, dilation):
    """(forward plan, data-gradient plan) for one group: C = ``channels``
    in, O = ``outputs`` out. The data-gradient plan is the forward plan
    itself (col2im) or a ShiftPlan of the full correlation."""
    kh, kw = kernel
    out_h = (height + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    out_w = (width + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    columns = channels * kh * kw * out_h * out_w
    if _takes_winograd(channels, outputs, kernel, stride, columns):
        shift = ShiftPlan(channels, height, width, outputs, kernel, pad, dilation)
        full_pad = tuple(2 * d - p for p, d in zip(pad, dilation))
        return (WinogradPlan(channels, height, width, outputs, pad, dilation, fallback=shift),
                WinogradPlan(outputs, out_h, out_w, channels, full_pad, dilation))
    # A 1x1 takes the shift plan at any size: it is then a GEMM on the image.
    if stride == (1, 1) and (kernel == (1, 1) or columns > SMALL_COLUMNS):
        forward = ShiftPlan(channels, height, width, outputs, kernel, pad, dilation)
        full_pad = tuple(d * (k - 1) - p for k, p, d in zip(kernel, pad, dilation))
        return forward, ShiftPlan(outputs, out_h, out_w, channels, kernel, full_pad, dilation)
    plan = ColumnPlan(channels, height, width, outputs, kernel, pad, stride, dilation)
    return plan, plan


def _takes_winograd(channels, outputs, kernel, stride, columns):
    """Whether a layer takes the WinogradPlan (see WINOGRAD_MIN_CHANNELS)."""
    return (kernel == (3, 3) and stride == (1, 1) and columns > SMALL_COLUMNS
            and min(channels, outputs) >= WINOGRAD_MIN_CHANNELS)


def _epilogue(out, bias, relu):
    """out (O, rows, W) += bias (O,), then ReLU, in place."""
    if bias is not None:
        out += bias[:, None, None]
    if relu:
        np.maximum(out, 0, out=out)


def _row_sums(workspace, rows, weight_diff, rows_of, split):
    """weight_diff += the weight gradient of output rows [0, rows), where
    ``rows_of(scratch, lo, hi, target)`` adds that of rows [lo, hi) to
    ``target``. With ``split``, the rows are shared out between threads
    (``layers.cpu_threads``): the first range adds into ``weight_diff``,
    the others into zeroed sums of their own, added after, in row order."""
    if not split:
        rows_of(workspace, 0, rows, weight_diff)
        return
    others = []

    def work(scratch, lo, hi):
        if lo == 0:
            rows_of(scratch, lo, hi, weight_diff)
            return
        total = scratch.zeros("weight_sum", weight_diff.shape, weight_diff.dtype)
        rows_of(scratch, lo, hi, total)
        others.append((lo, total))
    split_work(workspace, rows, work)
    for _, total in sorted(others, key=lambda item: item[0]):
        weight_diff += total


class Padder:
    """Zero-pads (or, for negative pads, crops) an image (C, H, W) into the
    workspace buffer ``name`` (C, H + 2 ph, W + 2 pw) and returns it
    flattened to (C, Hp * Wp). With no padding the image itself is returned
    (a view)."""

    def __init__(self, channels, height, width, pad):
        self.channels, self.pad = channels, pad
        self.height, self.width = height + 2 * pad[0], width + 2 * pad[1]
        # Destination and source ranges per axis; a negative pad crops.
        self.dst = tuple(slice(max(p, 0), max(p, 0) + n - 2 * max(-p, 0))
                         for p, n in zip(pad, (height, width)))
        self.src = tuple(slice(max(-p, 0), n - max(-p, 0)) for p, n in zip(pad, (height, width)))

    def __call__(self, workspace, image, name="padded"):
        if self.pad == (0, 0):
            return image.reshape(image.shape[0], -1)
        buffer = workspace.array(name, (self.channels, self.height, self.width), image.dtype)
        (top, bottom), (left, right) = ((s.start, s.stop) for s in self.dst)

        def pad(_, lo, hi):
            # The workspace is shared, so the border is zeroed on every call.
            part = buffer[lo:hi]
            part[:, :top] = 0
            part[:, bottom:] = 0
            part[:, top:bottom, :left] = 0
            part[:, top:bottom, right:] = 0
            part[:, top:bottom, left:right] = image[lo:hi, self.src[0], self.src[1]]
        split_pass(workspace, self.channels, pad, buffer.size)
        return buffer.reshape(self.channels, -1)


class ShiftPlan:
    """Stride-1 correlation of one image (C, H, W) with weights
    (O, C, kh, kw) into (O, Ho, Wo) (module docstring). Holds only shapes
    and offsets; every buffer comes from the workspace of each call."""

    def __init__(self, channels, height, width, outputs, kernel, pad, dilation):
        (kh, kw), (dh, dw) = kernel, dilation
        self.channels, self.outputs, self.kernel = channels, outputs, kernel
        self.padder = Padder(channels, height, width, pad)
        wp = self.pitch = self.padder.width
        self.out_height = self.padder.height - (kh - 1) * dh
        self.out_width = wp - (kw - 1) * dw
        # Columns of the padded-width output that are computed: the last row
        # stops at Wo, which keeps every read inside the padded image.
        self.length = (self.out_height - 1) * wp + self.out_width
        self.offsets = [i * dh * wp + j * dw for i in range(kh) for j in range(kw)]
        self.row_step = dh * wp  # flat offset between kernel rows
        self.taps = channels * kh * kw
        self.direct = kernel == (1, 1)  # the (padded) image is the column matrix
        self.multiply_adds = outputs * self.taps * self.out_height * self.out_width
        self.cropped = self.out_width != wp
        # Chunks hold the forward's kw shifted copies, the weight
        # gradient's kh * kw ones, and outputs.
        self.rows = _chunk_rows(max(kw * channels, outputs) * wp, wp, self.out_height)
        self.gradient_rows = _chunk_rows(max(self.taps, outputs) * wp, wp, self.out_height)

    def _chunks(self, whole=False, rows=None, lo=0, hi=None):
        """(first output row, rows, first flat column, columns) per chunk
        of ``rows`` (default ``self.rows``) output rows of [lo, hi)
        (default all); one when ``whole``."""
        hi = self.out_height if hi is None else hi
        step = hi - lo if whole else rows or self.rows
        for y0 in range(lo, hi, max(step, 1)):
            count = min(step, hi - y0)
            start = y0 * self.pitch
            yield y0, count, start, min(count * self.pitch, self.length - start)

    def _columns(self, workspace, flat, start, count):
        """The (C * kh * kw, count) column matrix of flat output columns
        [start, start + count), rows ordered (c, i, j)."""
        if self.direct:
            return flat[:, start:start + count]
        block = workspace.array("columns", (self.channels, len(self.offsets), count), flat.dtype)
        for t, offset in enumerate(self.offsets):
            block[:, t] = flat[:, start + offset:start + offset + count]
        return block.reshape(self.taps, count)

    def _padded_width(self, workspace, name, rows, dtype):
        """A chunk buffer (O, rows, Wp) on the padded width."""
        return workspace.array(name, (self.outputs, rows, self.pitch), dtype)

    def _arrange(self, workspace, weight):
        """Weights (O, C, kh, kw) (any strides) as the forward uses them:
        (kh, O, kw * C), K ordered (j, c) like ``_row_operands``; a 1x1's
        (1, O, C) is a view."""
        o, c, kh, kw = weight.shape
        if self.direct:
            return weight.reshape(o, c)[None]
        arranged = workspace.array("arranged_weight", (kh, o, kw, c), weight.dtype)
        arranged[...] = weight.transpose(2, 0, 3, 1)
        return arranged.reshape(kh, o, kw * c)

    def _row_operands(self, workspace, flat, start, count):
        """Per kernel row i, the (kw * C, count) operand for flat output
        columns [start, start + count): views into kw shifted copies."""
        if self.direct:
            return [flat[:, start:start + count]]
        (kh, kw), row_step = self.kernel, self.row_step
        span = count + (kh - 1) * row_step
        shifted = workspace.array("shifted", (kw, self.channels, span), flat.dtype)
        for j in range(kw):
            shifted[j] = flat[:, start + self.offsets[j]:start + self.offsets[j] + span]
        matrix = shifted.reshape(kw * self.channels, span)
        return [matrix[:, i * row_step:i * row_step + count] for i in range(kh)]

    def _correlate(self, workspace, arranged, flat, start, count, target):
        """target (O, count) = the chunk's output, summing over kernel rows."""
        operands = self._row_operands(workspace, flat, start, count)
        np.matmul(arranged[0], operands[0], out=target)
        for i in range(1, len(operands)):
            partial = workspace.array("partial_sum", target.shape, target.dtype)
            np.matmul(arranged[i], operands[i], out=partial)
            target += partial

    def forward(self, workspace, image, weight, out, bias=None, relu=False):
        """out (O, Ho, Wo) = correlation of image (C, H, W) with ``weight``
        (O, C, kh, kw), plus bias (O,) if given, then ReLU if ``relu``.
        Large layers run their output rows on the BLAS's threads, each
        with its own copies, GEMMs and epilogue (``layers.cpu_threads``)."""
        flat = self.padder(workspace, image)
        arranged = self._arrange(workspace, weight)
        if self.direct and not self.cropped:
            # Without copies to keep in cache, one GEMM (on the BLAS's own
            # threads) and the epilogue as one pass split between threads:
            # fewer GEMM calls, each a fork and join of the BLAS's threads
            # (0.97x and 0.985x of the trunk forward with the chunked GEMMs
            # and in-cache epilogue, medians of 6 and 5 alternated rounds).
            self._forward_rows(workspace, arranged, flat, out, None, False, 0,
                               self.out_height, whole=True)
            if bias is not None or relu:
                def finish(_, lo, hi):
                    _epilogue(out[lo:hi], None if bias is None else bias[lo:hi], relu)
                split_pass(workspace, self.outputs, finish, out.size)
            return

        def rows(scratch, lo, hi):
            self._forward_rows(scratch, arranged, flat, out, bias, relu, lo, hi)
        if worth_splitting(self.multiply_adds):
            split_work(workspace, self.out_height, rows)
        else:
            rows(workspace, 0, self.out_height)

    def _forward_rows(self, workspace, arranged, flat, out, bias, relu, lo, hi, whole=False):
        """Output rows [lo, hi) of ``forward``, chunk by chunk (one chunk
        when ``whole``), with scratch from ``workspace``."""
        out2 = out.reshape(self.outputs, -1)
        for y0, rows, start, count in self._chunks(whole, lo=lo, hi=hi):
            dest = out[:, y0:y0 + rows]
            if not self.cropped:
                self._correlate(workspace, arranged, flat, start, count, out2[:, start:start + count])
                _epilogue(dest, bias, relu)
                continue
            chunk = self._padded_width(workspace, "output", rows, out.dtype)
            self._correlate(workspace, arranged, flat, start, count,
                            chunk.reshape(self.outputs, -1)[:, :count])
            # Crop (and add the bias) while the chunk is in cache.
            valid = chunk[:, :, :self.out_width]
            if bias is None:
                dest[...] = valid
            else:
                np.add(valid, bias[:, None, None], out=dest)
            _epilogue(dest, None, relu)

    def weight_gradient(self, workspace, image, top_diff, weight_diff):
        """weight_diff (O, C * kh * kw) += d(sum(top_diff * out)) / d(weight)
        for image (C, H, W) and top_diff (O, Ho, Wo)."""
        flat = self.padder(workspace, image)
        diff2 = top_diff.reshape(self.outputs, -1)

        def rows_of(scratch, lo, hi, target):
            partial = scratch.array("weight_partial", (self.outputs, self.taps), target.dtype)
            chunks = self._chunks(self.direct, self.gradient_rows, lo, hi)
            for y0, rows, start, count in chunks:
                if self.cropped:
                    # The diff on the padded width, garbage columns zero
                    # (they meet finite garbage columns of the image).
                    chunk = self._padded_width(scratch, "diff", rows, top_diff.dtype)
                    chunk[:, :, :self.out_width] = top_diff[:, y0:y0 + rows]
                    chunk[:, :, self.out_width:] = 0
                    diff = chunk.reshape(self.outputs, -1)[:, :count]
                else:
                    diff = diff2[:, start:start + count]
                np.matmul(diff, self._columns(scratch, flat, start, count).T, out=partial)
                target += partial
        # A 1x1's columns are the image: one GEMM on the BLAS's threads.
        _row_sums(workspace, self.out_height, weight_diff, rows_of,
                  not self.direct and worth_splitting(self.multiply_adds))

    def data_gradient(self, workspace, top_diff, weight, image_diff):
        """The forward plan's adjoint, for a plan built as the full
        correlation: image_diff (this plan's out) from top_diff (its image)
        and the forward's ``weight`` (this plan's (C, O, kh, kw)), used
        transposed and rotated 180 degrees (a view; ``forward`` arranges
        it in one copy)."""
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        self.forward(workspace, top_diff, flipped, image_diff)


class ColumnPlan:
    """Correlation of one image (C, H, W) -> (O, Ho, Wo) with any stride,
    through an im2col column matrix built chunk by chunk (rows ordered
    (c, i, j) like the weights), and its adjoint col2im for the data
    gradient."""

    def __init__(self, channels, height, width, outputs, kernel, pad, stride, dilation):
        kh, kw = kernel
        self.channels, self.outputs = channels, outputs
        self.height, self.width = height, width
        self.kernel, self.pad, self.stride, self.dilation = kernel, pad, stride, dilation
        self.padder = Padder(channels, height, width, pad)
        hp, wp = self.padder.height, self.padder.width
        self.out_height = (hp - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
        self.out_width = (wp - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
        self.taps = kh * kw * channels
        self.multiply_adds = outputs * self.taps * self.out_height * self.out_width
        self.rows = _chunk_rows(self.taps * self.out_width, self.out_width, self.out_height)

    def _chunks(self, lo=0, hi=None):
        """(first output row, rows) per chunk of output rows [lo, hi)."""
        hi = self.out_height if hi is None else hi
        for y0 in range(lo, hi, self.rows):
            yield y0, min(self.rows, hi - y0)

    def _tap_views(self, image3, y0, rows):
        """For each tap (i, j): the (C, rows, Wo) strided view of the padded
        image (C, Hp, Wp) that tap reads for output rows [y0, y0 + rows)."""
        (kh, kw), (sh, sw), (dh, dw) = self.kernel, self.stride, self.dilation
        for i in range(kh):
            top = y0 * sh + i * dh
            for j in range(kw):
                yield (i, j), image3[:, top:top + (rows - 1) * sh + 1:sh,
                                     j * dw:j * dw + (self.out_width - 1) * sw + 1:sw]

    def _block(self, workspace, rows, dtype):
        """The chunk's column buffer as (C, kh, kw, rows, Wo)."""
        return workspace.array("columns", (self.channels, *self.kernel, rows, self.out_width), dtype)

    def _fill(self, workspace, image3, y0, rows):
        block = self._block(workspace, rows, image3.dtype)
        for (i, j), view in self._tap_views(image3, y0, rows):
            block[:, i, j] = view
        return block.reshape(self.taps, rows * self.out_width)

    def _image3(self, workspace, image):
        flat = self.padder(workspace, image)
        return flat.reshape(self.channels, self.padder.height, self.padder.width)

    def forward(self, workspace, image, weight, out, bias=None, relu=False):
        """As ``ShiftPlan.forward``, any stride."""
        image3 = self._image3(workspace, image)
        out2 = out.reshape(self.outputs, -1)
        weight = weight.reshape(self.outputs, self.taps)
        wo = self.out_width

        def rows_of(scratch, lo, hi):
            for y0, rows in self._chunks(lo, hi):
                np.matmul(weight, self._fill(scratch, image3, y0, rows),
                          out=out2[:, y0 * wo:(y0 + rows) * wo])
                _epilogue(out[:, y0:y0 + rows], bias, relu)
        if worth_splitting(self.multiply_adds):
            split_work(workspace, self.out_height, rows_of)
        else:
            rows_of(workspace, 0, self.out_height)

    def weight_gradient(self, workspace, image, top_diff, weight_diff):
        """As ``ShiftPlan.weight_gradient``."""
        image3 = self._image3(workspace, image)
        diff = top_diff.reshape(self.outputs, -1)
        wo = self.out_width

        def rows_of(scratch, lo, hi, target):
            partial = scratch.array("weight_partial", (self.outputs, self.taps), target.dtype)
            for y0, rows in self._chunks(lo, hi):
                columns = self._fill(scratch, image3, y0, rows)
                np.matmul(diff[:, y0 * wo:(y0 + rows) * wo], columns.T, out=partial)
                target += partial
        _row_sums(workspace, self.out_height, weight_diff, rows_of,
                  worth_splitting(self.multiply_adds))

    def data_gradient(self, workspace, top_diff, weight, image_diff):
        """image_diff (C, H, W) = d(sum(top_diff * out)) / d(image), with
        the forward's ``weight`` (O, C, kh, kw)."""
        diff = top_diff.reshape(self.outputs, -1)
        matrix = weight.reshape(self.outputs, self.taps)
        padded = workspace.zeros("image_diff", (self.channels, self.padder.height,
                                                self.padder.width), image_diff.dtype)
        wo = self.out_width
        for y0, rows in self._chunks():
            block = self._block(workspace, rows, image_diff.dtype)
            np.matmul(matrix.T, diff[:, y0 * wo:(y0 + rows) * wo],
                      out=block.reshape(self.taps, rows * wo))
            # col2im: taps overlap in the image, so add tap by tap.
            for (i, j), view in self._tap_views(padded, y0, rows):
                view += block[:, i, j]
        ph, pw = self.pad
        image_diff[...] = padded[:, ph:ph + self.height, pw:pw + self.width]
