"""Winograd F(2x2, 3x3) for the CPU forward of 3x3 stride-1 convolutions
(Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks").

Each 2x2 block of output is computed from the 4x4 tile of input around it:
``Y = A^T [ (G g G^T) * (B^T d B) ] A`` (``*`` element-wise), with

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

The sum over input channels moves inside the transform, so a layer is 16
GEMMs ``M[k] (O, T) = U[k] (O, C) @ V[k] (C, T)`` over T tiles, 16 * O * C
* T multiply-adds instead of the 36 * O * C * T of direct summation (2.25x
fewer); the transforms are adds and subtracts, O(C * T + O * T).

Dilation d: the output pixels of one phase (row mod d, column mod d) read
only input pixels of the same phase, and on that sub-grid the kernel is
undilated. So a dilated 3x3 is d * d independent undilated valid 3x3
correlations, each gathered from the image at stride d (any pad).

The input of a chunk of tile rows is gathered into scratch (C, 2, 2,
n + 1, Tx + 1), rows and columns split by parity, so that the 4 rows
(columns) of every tile are the even, odd, next even and next odd row
(column) of a plane, and each transform add runs over whole planes (long
contiguous runs) instead of 4-wide tiles. The price is one garbage tile
column per tile row (Tx + 1 GEMM columns per Tx tiles), never read back.
All phases' chunks of a dilated layer share one batched GEMM, so it stays
wide. The element-wise transforms run on two threads (channel halves).
"""
import concurrent.futures
import os

import numpy as np

from layers.cpu_threads import split_work, worth_splitting

# G (x) G as (16, 9): U[4r + s] = sum_ij G[r, i] G[s, j] g[i, j].
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
WEIGHT_TRANSFORM = np.einsum("ri,sj->rsij", _G, _G).reshape(16, 9)

# Tiles (GEMM columns) per batched GEMM. Measured on the trunk shapes: the
# whole image in one GEMM was as fast as or faster than chunks of 256-2048
# tiles (the GEMMs narrow, more NumPy calls; L2 is only 1 MiB a core, and
# the whole res3/res4/res5 V of 10-22 MiB stays in the 32 MiB L3), so this
# only bounds the scratch (V and M are 16 * (C + O) * 4096 floats at most:
# 32 MiB at C = O = 256).
CHUNK_TILES = 4096
# Transforms of arrays of at least this many bytes run on two threads.
PARALLEL_BYTES = 1 << 20
_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
_executor = None


def _in_range(start, step, count, size):
    """Indices [lo, hi) of ``r`` in range(count) with 0 <= start + step * r < size."""
    lo = min(count, max(0, -(-(-start) // step)))
    hi = min(count, max(lo, -(-(size - start) // step)))
    return lo, hi


def _gather(dst, image, row0, row_step, col0, col_step):
    """dst (C, R, X)[c, r, x] = image (C, H, W)[c, row0 + row_step * r,
    col0 + col_step * x], zero where that is outside the image."""
    _, height, width = image.shape
    _, rows, cols = dst.shape
    r0, r1 = _in_range(row0, row_step, rows, height)
    c0, c1 = _in_range(col0, col_step, cols, width)
    # Scratch is shared by all layers: the zero border is written each call.
    dst[:, :r0] = 0
    dst[:, r1:] = 0
    dst[:, r0:r1, :c0] = 0
    dst[:, r0:r1, c1:] = 0
    if r1 > r0 and c1 > c0:
        top, left = row0 + row_step * r0, col0 + col_step * c0
        dst[:, r0:r1, c0:c1] = image[:, top:top + row_step * (r1 - r0 - 1) + 1:row_step,
                                     left:left + col_step * (c1 - c0 - 1) + 1:col_step]


class WinogradPlan:
    """3x3 stride-1 correlation of one image (C, H, W) with weights
    (O, C, 3, 3) into (O, Ho, Wo), any pad (negative crops), any dilation,
    by Winograd F(2x2, 3x3) (module docstring). ``weight_gradient`` is the
    GEMM path of ``fallback`` (a ShiftPlan of the same geometry, or None
    for a data-gradient plan). Holds only shapes; scratch comes from the
    workspace of each call."""

    def __init__(self, channels, height, width, outputs, pad, dilation, fallback=None):
        self.channels, self.outputs, self.fallback = channels, outputs, fallback
        self.height, self.width, self.pad, self.dilation = height, width, pad, dilation
        self.out_height = height + 2 * pad[0] - 2 * dilation[0]
        self.out_width = width + 2 * pad[1] - 2 * dilation[1]
        dh, dw = dilation
        # Per phase (a, b): its output rows Ho_a and columns Wo_b.
        self.phases = [(a, b, -(-(self.out_height - a) // dh), -(-(self.out_width - b) // dw))
                       for a in range(min(dh, self.out_height))
                       for b in range(min(dw, self.out_width))]
        self.groups = self._schedule()

    def _schedule(self):
        """Groups of pieces, each piece (a, b, rows, cols, t0, n, Tx, offset):
        tile rows [t0, t0 + n) of phase (a, b) (output sub-grid rows x
        cols, Tx tiles wide) at column ``offset`` of the group's GEMM. A
        group holds about CHUNK_TILES tiles, at least one tile row; the
        small phases of a dilated layer share one GEMM so it stays wide."""
        groups, group, used = [], [], 0
        for a, b, rows, cols in self.phases:
            tiles_y, tiles_x = -(-rows // 2), -(-cols // 2)
            pitch = tiles_x + 1  # GEMM columns per tile row (one garbage)
            t0 = 0
            while t0 < tiles_y:
                n = min(tiles_y - t0, (CHUNK_TILES - used) // pitch)
                if n < 1 and group:
                    groups.append(group)
                    group, used = [], 0
                    continue
                n = max(n, 1)
                group.append((a, b, rows, cols, t0, n, tiles_x, used))
                used += n * pitch
                t0 += n
        if group:
            groups.append(group)
        return groups

    def transform_weight(self, workspace, weight, adjoint=False):
        """U (16, O, C) = G g G^T per (o, c) of ``weight`` (O, C, 3, 3);
        with ``adjoint``, of the weights flipped 180 degrees and
        transposed, (16, C, O) as a transposed view of (16, O, C)."""
        o, c = weight.shape[:2]
        if not weight.flags.c_contiguous:
            copy = workspace.array("winograd_weight_copy", weight.shape, weight.dtype)
            copy[...] = weight
            weight = copy
        transform = WEIGHT_TRANSFORM[:, ::-1] if adjoint else WEIGHT_TRANSFORM
        transformed = workspace.array("winograd_weight", (16, o * c), weight.dtype)
        # One GEMM (16, 9) @ (9, O * C), the second operand a transposed view.
        np.matmul(transform.astype(weight.dtype), weight.reshape(o * c, 9).T, out=transformed)
        transformed = transformed.reshape(16, o, c)
        return transformed.transpose(0, 2, 1) if adjoint else transformed

    def forward(self, workspace, image, weight, out, bias=None, relu=False):
        """out (O, Ho, Wo) = correlation of image (C, H, W) with ``weight``
        (O, C, 3, 3), plus bias (O,) if given, then ReLU if ``relu``."""
        self._apply(workspace, image, self.transform_weight(workspace, weight), out, bias, relu)

    def data_gradient(self, workspace, top_diff, weight, image_diff):
        """For a plan built as the full correlation (module conv_plans):
        image_diff (this plan's out) from top_diff (its image) and the
        forward's ``weight`` (O, C, 3, 3), used flipped and transposed."""
        self._apply(workspace, top_diff, self.transform_weight(workspace, weight, adjoint=True),
                    image_diff, None, False)

    def weight_gradient(self, workspace, image, top_diff, weight_diff):
        """The GEMM path (Winograd would not save work here)."""
        self.fallback.weight_gradient(workspace, image, top_diff, weight_diff)

    def _apply(self, workspace, image, transformed, out, bias, relu):
        """out from image and U (16, O, C): per group of pieces, the input
        transform of each piece, one batched GEMM, the output transforms."""
        c, o, dtype = self.channels, self.outputs, image.dtype
        for group in self.groups:
            width = sum(n * (tiles_x + 1) for *_, n, tiles_x, _ in group)
            values = workspace.array("winograd_values", (16, c, width), dtype)
            for a, b, _, _, t0, n, tiles_x, offset in group:
                source = workspace.array("winograd_input", (c, 2, 2, n + 1, tiles_x + 1), dtype)
                columns = workspace.array("winograd_columns", (4, c, 2, (n + 1) * (tiles_x + 1)), dtype)
                target = values[:, :, offset:offset + n * (tiles_x + 1)]

                def transform_in(cs, a=a, b=b, t0=t0, source=source, columns=columns, target=target):
                    self._gather(image[cs], a, b, t0, source[cs])
                    _input_transform(source[cs], columns[:, cs], target[:, cs])
                _on_two_threads(c, columns.nbytes + 4 * source.nbytes, transform_in)
            product = workspace.array("winograd_product", (16, o, width), dtype)
            self._products(workspace, transformed, values, product)
            for a, b, _, _, t0, n, tiles_x, offset in group:
                piece = product[:, :, offset:offset + n * (tiles_x + 1)].reshape(16, o, n, tiles_x + 1)
                # The phase's output sub-grid (O, rows, cols) of out.
                target = out[:, a::self.dilation[0], b::self.dilation[1]]

                def transform_out(os, piece=piece, target=target, t0=t0):
                    _output_transform(piece[:, os], target[os], t0,
                                      None if bias is None else bias[os], relu)
                _on_two_threads(o, 4 * piece.nbytes // 16, transform_out)

    @staticmethod
    def _products(workspace, transformed, values, product):
        """product[k] = U[k] @ V[k], k < 16: for a large layer the 16 GEMMs
        are shared out between threads, each on one BLAS thread (no BLAS
        thread then spins through the element-wise transforms around it)."""
        def gemms(_, lo, hi):
            np.matmul(transformed[lo:hi], values[lo:hi], out=product[lo:hi])
        _, o, width = product.shape
        if worth_splitting(16 * o * values.shape[1] * width):
            split_work(workspace, 16, gemms)
        else:
            gemms(workspace, 0, 16)

    def _gather(self, image, a, b, t0, source):
        """source (C, 2, 2, n + 1, Tx + 1)[c, p, q, y, x] = the pixel of
        phase (a, b)'s sub-grid at row 2 (t0 + y) + p, column 2 x + q, of
        image (C, H, W) (zero outside it)."""
        (ph, pw), (dh, dw) = self.pad, self.dilation
        for p in range(2):
            for q in range(2):
                _gather(source[:, p, q], image, a + dh * (2 * t0 + p) - ph, 2 * dh,
                        b + dw * q - pw, 2 * dw)


def _on_two_threads(count, total_bytes, work):
    """``work(slice)`` over channels [0, count): both halves at once on two
    threads when the arrays are large. NumPy's element-wise loops run on
    one core (the GEMM on both) and release the GIL; a second core raises
    their memory bandwidth (layers/fused.py measured 1.4-1.6x). Slicing
    further, to keep a slice in L2, cost more in per-call overhead than it
    saved (measured)."""
    if _THREADS < 2 or total_bytes < PARALLEL_BYTES or count < 2:
        work(slice(0, count))
        return
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(_THREADS - 1)
    half = count // 2
    other = _executor.submit(work, slice(half, count))
    work(slice(0, half))
    other.result()


def _input_transform(source, columns, target):
    """target (16, C, n * (Tx + 1)) = B^T d B per tile (the last column of
    each tile row is garbage, never read back) from source (C, 2, 2,
    n + 1, Tx + 1) (``WinogradPlan._gather``), through columns (4, C, 2,
    (n + 1) * (Tx + 1)) scratch. Splitting rows and columns by parity
    makes the 4 rows (columns) of every tile the even, odd, next even and
    next odd row (column) of a plane: each add below runs over long
    contiguous runs of whole planes, not 4-wide tiles."""
    channels, width = target.shape[1:]
    length = columns.shape[3]
    pitch = length - width  # Tx + 1: one row of a plane
    planes = source.reshape(channels, 2, 2, length)
    even, odd = planes[:, :, 0], planes[:, :, 1]  # (C, 2, length): column parity planes
    # B^T on the tile columns: d0 - d2, d1 + d2, d2 - d1, d1 - d3, i.e.
    # even[x] - even[x + 1], odd[x] + even[x + 1], ... over whole planes;
    # the last element (a garbage column) is zeroed to stay finite.
    np.subtract(even[..., :-1], even[..., 1:], out=columns[0, ..., :-1])
    np.add(odd[..., :-1], even[..., 1:], out=columns[1, ..., :-1])
    np.subtract(even[..., 1:], odd[..., :-1], out=columns[2, ..., :-1])
    np.subtract(odd[..., :-1], odd[..., 1:], out=columns[3, ..., :-1])
    columns[..., -1] = 0
    values = target.reshape(4, 4, channels, width)  # (tile row r, column s, C, n * (Tx + 1))
    for s in range(4):
        # B^T on the tile rows: the next tile row is one plane row on.
        even_rows, odd_rows = columns[s, :, 0], columns[s, :, 1]
        d0, d1 = even_rows[:, :width], odd_rows[:, :width]
        d2, d3 = even_rows[:, pitch:], odd_rows[:, pitch:]
        np.subtract(d0, d2, out=values[0, s])
        np.add(d1, d2, out=values[1, s])
        np.subtract(d2, d1, out=values[2, s])
        np.subtract(d1, d3, out=values[3, s])


def _output_transform(m, target, t0, bias, relu):
    """target (O, rows, cols)'s tile rows [t0, t0 + n) from M (16, O, n,
    Tx) (destroyed): Y = A^T M A, plus bias, then ReLU."""
    _, _, n, _ = m.shape
    rows, cols = target.shape[1:]
    # A^T on the rows, in place: m[s] <- m0s + m1s + m2s, m[4 + s] <- m1s - m2s - m3s.
    for s in range(4):
        m[s] += m[4 + s]
        m[s] += m[8 + s]
        m[4 + s] -= m[8 + s]
        m[4 + s] -= m[12 + s]
    for ry in range(2):
        k = 4 * ry
        # A on the columns, in place: y0 in m[k], y1 in m[k + 1].
        m[k] += m[k + 1]
        m[k] += m[k + 2]
        m[k + 1] -= m[k + 2]
        m[k + 1] -= m[k + 3]
        for rx in range(2):
            y = m[k + rx]
            if bias is not None:
                y += bias[:, None, None]
            if relu:
                np.maximum(y, 0, out=y)
            # Output rows 2t + ry, columns 2x + rx of the sub-grid; the
            # tiles' overhang past an odd size is cropped here.
            ny = min(n, -(-(rows - ry) // 2) - t0)
            nx = -(-(cols - rx) // 2)
            if ny > 0 and nx > 0:
                target[:, 2 * t0 + ry:2 * (t0 + ny) + ry - 1:2, rx::2] = y[:, :ny, :nx]
