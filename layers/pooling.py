"""Spatial pooling (Caffe's ``Pooling``): MAX and AVE over 2-D windows.

Geometry, exactly as Caffe computes it:

- output size ``ceil((in + 2 * pad - kernel) / stride) + 1`` (``floor`` with
  ``round_mode: FLOOR``); when any pad is non-zero, a last window that would
  start at or beyond ``in + pad`` (entirely in the padding) is dropped;
- ``global_pooling``: kernel = the whole map, pad 0, stride 1;
- window ``(ph, pw)`` starts at ``ph * stride - pad``.

MAX looks at the real cells of the window only (clipped to the map) and
records the flat index ``h * W + w`` of the first maximum in row-major order
(Caffe's tie rule); backward routes the top diff to it, adding up where
windows overlap. AVE sums the real cells and divides by the window's area
clipped to the *padded* input (``min(start + kernel, in + pad) - start`` per
axis): pad cells count in the divisor, cells past the padded edge do not.

Kernel, stride and pad must fit a 32-bit int (Caffe keeps them as ``int``;
the CUDA kernels take ``int``). A stride larger than the padded map
(``in + 2 * pad``) on an axis with more than one output is refused: every
window after the first would lie wholly outside the map (Caffe's ceil rule
makes 2 outputs for any such stride; it is a typo, not a net).

A window with no real cell can only occur with pad 0, ceil rounding and
stride > kernel. Caffe then outputs -FLT_MAX for MAX; here it outputs 0 with
argmax -1 (and 0 for AVE), so no huge finite value leaks into the net. The
output shape is still Caffe's.
"""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch

# PoolingParameter enums (values of caffe.proto).
MAX, AVE, STOCHASTIC = 0, 1, 2
CEIL, FLOOR = 0, 1
INT32_MAX = 2 ** 31 - 1


def pooled_size(size, kernel, pad, stride, ceil_mode, any_pad):
    """Caffe's output extent along one axis (``any_pad``: some pad of the
    layer, on either axis, is non-zero; Caffe then drops a last window that
    starts inside the padding)."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def window_bounds(pooled, size, kernel, stride, pad):
    """Per output position along one axis: ``(start, end, area_extent)``,
    int64 arrays of length ``pooled``. ``start:end`` are the real cells (may
    be empty); ``area_extent`` is the extent AVE divides by."""
    start = np.arange(pooled, dtype=np.int64) * stride - pad
    padded_end = np.minimum(start + kernel, size + pad)
    extent = np.maximum(padded_end - start, 0)
    return np.maximum(start, 0), np.minimum(start + kernel, size), extent


@register("Pooling")
class PoolingLayer(Layer):
    """MAX or AVE pooling of a 4-D blob.

    bottom: (N, C, H, W). tops: (N, C, PH, PW) pooled values; for MAX an
    optional second top of the same shape holds the argmax mask (flat index
    ``h * W + w`` within the map, as reals; -1 for an empty window).
    pooling_param: pool (MAX, AVE; STOCHASTIC is refused), kernel_size or
    kernel_h + kernel_w, stride or stride_h + stride_w (default 1), pad or
    pad_h + pad_w (default 0), global_pooling, round_mode (CEIL, FLOOR).
    """

    exact_bottoms = 1
    min_tops = 1
    max_tops = 2

    def layer_setup(self, bottoms, tops):
        p = self.param.pooling_param
        self.pool = int(p.pool)
        if self.pool == STOCHASTIC:
            raise self.definition_error(
                "pool STOCHASTIC is not implemented; expected MAX or AVE")
        if self.pool not in (MAX, AVE):
            raise self.definition_error(f"pool must be MAX or AVE, found {self.pool}")
        if len(tops) > 1 and self.pool != MAX:
            raise self.definition_error(
                f"only MAX pooling has a second (argmax mask) top; pool AVE takes 1 top, "
                f"found {len(tops)}")
        self.global_pooling = bool(p.global_pooling)
        self.ceil_mode = p.round_mode == CEIL

        if self.global_pooling:
            if any(p.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w")):
                raise self.definition_error(
                    "global_pooling takes the whole map as kernel; expected no "
                    "kernel_size / kernel_h / kernel_w, found one")
            self.kernel = None  # the bottom's (H, W), known in reshape
        else:
            self.kernel = self._pair(p, "kernel_size", "kernel_h", "kernel_w", None)
            if min(self.kernel) <= 0:
                raise self.definition_error(f"kernel must be positive, found {self.kernel}")
        self.pad = self._pair(p, "pad", "pad_h", "pad_w", 0)
        self.stride = self._pair(p, "stride", "stride_h", "stride_w", 1)
        if min(self.stride) <= 0:
            raise self.definition_error(f"stride must be positive, found {self.stride}")
        for name, values in (("kernel", self.kernel or (1, 1)), ("stride", self.stride),
                             ("pad", self.pad)):
            if max(values) > INT32_MAX:
                raise self.definition_error(
                    f"{name} must fit a 32-bit int (at most {INT32_MAX}), found {values}")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.definition_error(
                "global_pooling needs pad 0 and stride 1, found pad "
                f"{self.pad} and stride {self.stride}")
        if self.kernel is not None and any(p >= k for p, k in zip(self.pad, self.kernel)):
            raise self.definition_error(
                f"pad must be smaller than kernel, found pad (h, w) {self.pad} "
                f"and kernel {self.kernel}")
        self.argmax = None  # int64 (N, C, PH, PW) for MAX, allocated in reshape

    def _pair(self, p, both, h_name, w_name, default):
        """(h, w) from ``both`` alone or from ``h_name`` and ``w_name``
        together; ``default`` when none is given (None: required)."""
        has_both, has_h, has_w = p.HasField(both), p.HasField(h_name), p.HasField(w_name)
        mixed = (has_h or has_w) and (has_both or not (has_h and has_w))
        if mixed or (default is None and not (has_both or has_h)):
            raise self.definition_error(
                f"expected {both} alone, or {h_name} and {w_name} together; found "
                f"{both} {_given(p, both)}, {h_name} {_given(p, h_name)}, "
                f"{w_name} {_given(p, w_name)}")
        if has_h:
            return int(getattr(p, h_name)), int(getattr(p, w_name))
        value = int(getattr(p, both)) if has_both else default
        return value, value

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if len(shape) != 4:
            raise self.shape_error(0, "4 axes (N, C, H, W)", shape)
        n, c, h, w = shape
        if self.global_pooling:
            self.kernel = (h, w)
        kh, kw = self.kernel
        (pad_h, pad_w), (sh, sw) = self.pad, self.stride
        if kh > h + 2 * pad_h or kw > w + 2 * pad_w:
            raise self.shape_error(
                0, f"a map of at least kernel - 2 * pad = ({kh - 2 * pad_h}, "
                   f"{kw - 2 * pad_w}) (H, W)", shape)
        any_pad = pad_h > 0 or pad_w > 0
        self.pooled = (pooled_size(h, kh, pad_h, sh, self.ceil_mode, any_pad),
                       pooled_size(w, kw, pad_w, sw, self.ceil_mode, any_pad))
        if any(p > 1 and s > size + 2 * pad for p, s, size, pad in
               zip(self.pooled, self.stride, (h, w), self.pad)):
            raise self.shape_error(
                0, f"a map whose padded extent (H + 2 * pad, W + 2 * pad) = "
                   f"({h + 2 * pad_h}, {w + 2 * pad_w}) is at least the stride {self.stride} "
                   f"on each axis with more than one output (output {self.pooled}: every "
                   "window after the first would lie outside the map)", shape)
        out_shape = (n, c) + self.pooled
        for top in tops:
            top.reshape(out_shape)
        if self.pool == MAX and (self.argmax is None or self.argmax.shape != out_shape):
            self.argmax = self.device.xp.empty(out_shape, dtype=np.int64)

    # -- geometry shared by the CPU paths ------------------------------------------
    def _bounds(self, h, w):
        (ph, pw), (kh, kw) = self.pooled, self.kernel
        return (window_bounds(ph, h, kh, self.stride[0], self.pad[0]),
                window_bounds(pw, w, kw, self.stride[1], self.pad[1]))

    def _by_offsets(self):
        """True: loop over the kh * kw kernel offsets, each step a strided
        view of the whole (padded) input. False: loop over the PH * PW
        windows, each a slice. Either way the loop is the shorter one and each
        step is vectorized over everything else (global pooling of a large map
        takes one step instead of H * W)."""
        return self.kernel[0] * self.kernel[1] <= self.pooled[0] * self.pooled[1]

    def _padded(self, x, fill):
        """``x`` inside a border of ``fill`` large enough for every window:
        ``pad`` before, and after up to the end of the last window (ceil mode
        may run past ``in + pad``). ``x`` itself when no border is needed."""
        n, c, h, w = x.shape
        (ph, pw), (kh, kw) = self.pooled, self.kernel
        (pad_h, pad_w), (sh, sw) = self.pad, self.stride
        hp = max((ph - 1) * sh + kh, pad_h + h)
        wp = max((pw - 1) * sw + kw, pad_w + w)
        if (hp, wp, pad_h, pad_w) == (h, w, 0, 0):
            return x
        out = np.full((n, c, hp, wp), fill, dtype=x.dtype)
        out[:, :, pad_h:pad_h + h, pad_w:pad_w + w] = x
        return out

    def _offset_views(self, padded):
        """Yield ``(i, j, view)``: view (N, C, PH, PW) of ``padded`` holding
        cell ``(i, j)`` of every window."""
        (ph, pw), (kh, kw), (sh, sw) = self.pooled, self.kernel, self.stride
        for i in range(kh):
            for j in range(kw):
                yield i, j, padded[:, :, i:i + (ph - 1) * sh + 1:sh, j:j + (pw - 1) * sw + 1:sw]

    def _area(self, h, w):
        (_, _, area_h), (_, _, area_w) = self._bounds(h, w)
        return area_h[:, None] * area_w[None, :]

    def _max_by_offsets(self, x, y, arg):
        """MAX forward looping over kernel offsets: the running maximum in
        ``y`` and, per window, the number ``which`` of the offset holding it.
        The first offset (row-major) holding the maximum wins, as only a
        strictly larger value replaces it (Caffe's tie rule). ``which`` is
        updated arithmetically: masked stores with random masks are several
        times slower than plain vector arithmetic."""
        kh, kw = self.kernel
        w = x.shape[3]
        which = np.zeros(y.shape, dtype=np.min_scalar_type(kh * kw))
        step = np.empty_like(which)
        for k, (i, j, view) in enumerate(self._offset_views(self._padded(x, -np.inf))):
            if k == 0:
                y[...] = view
                continue
            better = np.greater(view, y)
            np.maximum(y, view, out=y)
            # which = k where better: which + better * (k - which), exact
            # modulo 2**bits since the result fits.
            np.subtract(which.dtype.type(k), which, out=step)
            np.multiply(step, better, out=step)
            which += step
        # Flat index in the map of each window's first cell; the chosen cell
        # is never padding (-inf), so the sum is a real cell's index.
        origin = ((np.arange(self.pooled[0]) * self.stride[0] - self.pad[0])[:, None] * w
                  + (np.arange(self.pooled[1]) * self.stride[1] - self.pad[1])[None, :])
        offsets = (np.arange(kh)[:, None] * w + np.arange(kw)[None, :]).ravel()
        np.add(origin, offsets[which], out=arg)
        # Windows without a real cell (only padding seen) output 0, argmax -1.
        empty = y == -np.inf
        if empty.any():
            y[empty] = 0
            arg[empty] = -1

    def _max_values(self, x, y):
        """MAX forward without the argmax (no backward will read it): the
        running maximum over the kernel offsets, each a strided view of
        ``x`` clipped to the windows it reaches, so no padded copy is made
        and each offset is one pass."""
        (ph, pw), (kh, kw), (sh, sw), (pad_h, pad_w) = \
            self.pooled, self.kernel, self.stride, self.pad
        h, w = x.shape[2:]
        y.fill(-np.inf)
        for i in range(kh):
            r0, r1 = _reach(ph, h, sh, pad_h, i)
            for j in range(kw):
                c0, c1 = _reach(pw, w, sw, pad_w, j)
                if r0 >= r1 or c0 >= c1:
                    continue
                view = x[:, :, r0 * sh - pad_h + i:(r1 - 1) * sh - pad_h + i + 1:sh,
                         c0 * sw - pad_w + j:(c1 - 1) * sw - pad_w + j + 1:sw]
                target = y[:, :, r0:r1, c0:c1]
                np.maximum(target, view, out=target)
        if (ph - 1) * sh - pad_h >= h or (pw - 1) * sw - pad_w >= w:
            y[y == -np.inf] = 0  # windows with no real cell

    def _max_by_windows(self, x, y, arg):
        """MAX forward looping over the (few) windows, each a slice of x."""
        n, c, h, w = x.shape
        (hs, he, _), (ws, we, _) = self._bounds(h, w)
        for a in range(self.pooled[0]):
            for b in range(self.pooled[1]):
                if he[a] <= hs[a] or we[b] <= ws[b]:  # no real cell
                    y[:, :, a, b], arg[:, :, a, b] = 0, -1
                    continue
                win = x[:, :, hs[a]:he[a], ws[b]:we[b]].reshape(n, c, -1)
                k = win.argmax(axis=2)  # the first maximum in row-major order
                y[:, :, a, b] = np.take_along_axis(win, k[:, :, None], 2)[:, :, 0]
                width = we[b] - ws[b]
                arg[:, :, a, b] = (hs[a] + k // width) * w + ws[b] + k % width

    def _ave_sum(self, x, y):
        """y = the sum of the real cells of each window (pad cells add 0)."""
        if self._by_offsets():
            y.fill(0)
            for _, _, view in self._offset_views(self._padded(x, 0)):
                y += view
            return
        (hs, he, _), (ws, we, _) = self._bounds(x.shape[2], x.shape[3])
        for a in range(self.pooled[0]):
            for b in range(self.pooled[1]):
                y[:, :, a, b] = x[:, :, hs[a]:he[a], ws[b]:we[b]].sum(axis=(2, 3))

    # -- CPU -------------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        if self.pool == MAX:
            if not self.need_backward and len(tops) == 1 and self._by_offsets():
                self._max_values(x, y)
            elif self._by_offsets():
                self._max_by_offsets(x, y, self.argmax)
            else:
                self._max_by_windows(x, y, self.argmax)
            if len(tops) > 1:
                tops[1].data[...] = self.argmax
        else:
            self._ave_sum(x, y)
            # The area is 0 only for a window without a real cell, whose sum is 0.
            y /= np.maximum(self._area(x.shape[2], x.shape[3]), 1)

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        n, c, h, w = dx.shape
        if self.pool == MAX:
            # Scatter-add each top diff onto its argmax (np.add.at adds up
            # the contributions of overlapping windows; in the array's dtype,
            # without a map-sized float64 temporary). Empty windows (argmax
            # -1) carry weight 0.
            arg = self.argmax
            maps = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
            index = (maps + np.maximum(arg, 0)).ravel()
            weight = np.where(arg >= 0, dy, 0).ravel()
            dx.fill(0)
            np.add.at(dx.reshape(-1), index, weight)
            return
        share = dy / np.maximum(self._area(h, w), 1)
        if self._by_offsets():
            padded = self._padded(np.zeros_like(dx), 0)
            for _, _, view in self._offset_views(padded):
                view += share  # one offset never maps two windows onto one cell
            pad_h, pad_w = self.pad
            dx[...] = padded[:, :, pad_h:pad_h + h, pad_w:pad_w + w]
        else:
            (hs, he, _), (ws, we, _) = self._bounds(h, w)
            dx.fill(0)
            for a in range(self.pooled[0]):
                for b in range(self.pooled[1]):
                    dx[:, :, hs[a]:he[a], ws[b]:we[b]] += share[:, :, a, b, None, None]

    # -- GPU -------------------------------------------------------------------------
    def _geometry_args(self, x):
        n, c, h, w = x.shape
        return tuple(np.int32(v) for v in (
            h, w, self.pooled[0], self.pooled[1], self.kernel[0], self.kernel[1],
            self.stride[0], self.stride[1], self.pad[0], self.pad[1]))

    def forward_gpu(self, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        geometry = self._geometry_args(x)
        if self.pool == MAX:
            launch("pooling.cu", "max_pool_forward", x.dtype, y.size,
                   (np.int64(y.size), x) + geometry + (y, self.argmax))
            if len(tops) > 1:
                tops[1].data[...] = self.argmax
        else:
            launch("pooling.cu", "ave_pool_forward", x.dtype, y.size,
                   (np.int64(y.size), x) + geometry + (y,))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        geometry = self._geometry_args(dx)
        if self.pool == MAX:
            launch("pooling.cu", "max_pool_backward", dx.dtype, dx.size,
                   (np.int64(dx.size), dy, self.argmax) + geometry + (dx,))
        else:
            launch("pooling.cu", "ave_pool_backward", dx.dtype, dx.size,
                   (np.int64(dx.size), dy) + geometry + (dx,))


def _reach(pooled, size, stride, pad, offset):
    """``(first, end)``: the output positions along one axis whose window
    holds a real cell at kernel ``offset`` (0 <= p * stride - pad + offset
    < size)."""
    first = max(0, -(-(pad - offset) // stride))
    end = min(pooled, (size - 1 + pad - offset) // stride + 1)
    return first, end


def _given(p, field):
    return getattr(p, field) if p.HasField(field) else "unset"
