"""Element-wise combination of several equally shaped bottoms: Eltwise."""
import numpy as np

from layers.base import Layer, register
from layers.kernels import launch


@register("Eltwise")
class EltwiseLayer(Layer):
    """y = combination of bottoms x_0 .. x_{K-1} (K >= 2), element by element.

    bottoms: K blobs of one shape; top: that shape. Not in place.

    eltwise_param:
      operation: SUM (default) y = sum_k coeff_k * x_k; PROD y = prod_k x_k;
        MAX y = max_k x_k.
      coeff: one per bottom, SUM only (default all 1; ResNet uses SUM).
      stable_prod_grad (true): PROD's gradient for x_k is dy times the
        product of the other bottoms; false: dy * y / x_k (Caffe's faster,
        division-based form, undefined where x_k == 0).

    MAX keeps ``self.argmax`` (int32, top's shape): which bottom won each
    element; ties go to the first bottom holding the maximum, on both
    devices. Backward routes dy to that bottom only.
    """

    min_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.eltwise_param
        self.operation = p.EltwiseOp.Name(p.operation)
        coeffs = list(p.coeff)
        if coeffs and self.operation != "SUM":
            raise self.definition_error(
                f"eltwise_param.coeff applies to operation SUM only, found {len(coeffs)} "
                f"coeff(s) with operation {self.operation}")
        if coeffs and len(coeffs) != len(bottoms):
            raise self.definition_error(
                f"eltwise_param.coeff needs one value per bottom: expected {len(bottoms)}, "
                f"found {len(coeffs)}")
        self.coeffs = [float(c) for c in coeffs] or [1.0] * len(bottoms)
        self.stable_prod_grad = bool(p.stable_prod_grad)

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        for i, b in enumerate(bottoms[1:], start=1):
            if b.shape != shape:
                raise self.shape_error(
                    i, f"the shape of bottom '{self.bottom_name(0)}' {tuple(shape)}", b.shape)
        for b in bottoms:
            if b is tops[0]:
                # PROD and MAX backward need the inputs forward would overwrite.
                raise self.definition_error(
                    f"cannot work in place: top '{self.top_name(0)}' is also a bottom")
        tops[0].reshape(shape)
        if self.operation == "MAX":
            current = getattr(self, "argmax", None)
            if current is None or tuple(current.shape) != tuple(shape):
                current = self.device.xp.zeros(shape, dtype=np.int32)
            self.argmax = current
        else:
            self.argmax = None

    # -- SUM and PROD: the same xp expressions on both devices -----------------
    def _forward_arith(self, bottoms, tops):
        if self.operation == "SUM":
            y = tops[0].data
            y[...] = 0
            for c, b in zip(self.coeffs, bottoms):
                y += b.data if c == 1 else self.dtype.type(c) * b.data
        else:  # PROD
            y = tops[0].data
            y[...] = bottoms[0].data
            for b in bottoms[1:]:
                y *= b.data

    def _backward_arith(self, tops, propagate_down, bottoms):
        dy = tops[0].diff
        for i, b in enumerate(bottoms):
            if not propagate_down[i]:
                continue
            if self.operation == "SUM":
                c = self.coeffs[i]
                b.diff[...] = dy if c == 1 else self.dtype.type(c) * dy
            elif self.stable_prod_grad:
                # Product of the others, multiplied out (no division by x_i).
                others = [o.data for j, o in enumerate(bottoms) if j != i]
                grad = others[0] * dy
                for o in others[1:]:
                    grad *= o
                b.diff[...] = grad
            else:
                b.diff[...] = dy * tops[0].data / b.data

    # -- CPU ---------------------------------------------------------------------
    def forward_cpu(self, bottoms, tops):
        if self.operation != "MAX":
            return self._forward_arith(bottoms, tops)
        y = tops[0].data
        y[...] = bottoms[0].data
        self.argmax[...] = 0
        for i, b in enumerate(bottoms[1:], start=1):
            # Strictly greater: ties stay with the earlier bottom.
            better = b.data > y
            y[better] = b.data[better]
            self.argmax[better] = i

    def backward_cpu(self, tops, propagate_down, bottoms):
        if self.operation != "MAX":
            return self._backward_arith(tops, propagate_down, bottoms)
        dy = tops[0].diff
        for i, b in enumerate(bottoms):
            if propagate_down[i]:
                b.diff[...] = np.where(self.argmax == i, dy, 0)

    # -- GPU ---------------------------------------------------------------------
    def forward_gpu(self, bottoms, tops):
        if self.operation != "MAX":
            return self._forward_arith(bottoms, tops)
        y = tops[0].data
        for i, b in enumerate(bottoms):
            launch("eltwise.cu", "eltwise_max_forward", y.dtype, y.size,
                   (np.int64(y.size), b.data, np.int32(i), y, self.argmax))

    def backward_gpu(self, tops, propagate_down, bottoms):
        if self.operation != "MAX":
            return self._backward_arith(tops, propagate_down, bottoms)
        dy = tops[0].diff
        for i, b in enumerate(bottoms):
            if propagate_down[i]:
                launch("eltwise.cu", "eltwise_max_backward", dy.dtype, dy.size,
                       (np.int64(dy.size), dy, self.argmax, np.int32(i), b.diff))
