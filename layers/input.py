"""Layers that produce blobs without bottoms: Input and DummyData.

Neither has a backward computation: their tops are leaves of the graph.
Both size their tops once, in setup (as Caffe does); ``reshape`` leaves the
tops alone, so a shape the Net or the user gives an input blob later (pycaffe's
``net.blobs['data'].reshape(...)``) is kept.
"""
from layers.base import Layer, register
from netdef.device import array_module
from netdef.errors import NetDefinitionError
from netdef.fillers import fill


def _dims(layer, blob_shape, what):
    """The dims of a BlobShape as a tuple, refusing negative ones."""
    dims = tuple(int(d) for d in blob_shape.dim)
    if any(d < 0 for d in dims):
        raise layer.definition_error(f"{what} must have non-negative dims, found {dims}")
    return dims


def _shape_per_top(layer, shapes, num_tops, field):
    """Pick one shape per top from a repeated ``field``: one entry for every
    top, or one entry per top."""
    if len(shapes) not in (1, num_tops):
        raise layer.definition_error(
            f"{field} must be given once or once per top ({num_tops} top(s)), "
            f"found {len(shapes)}")
    return [shapes[0] if len(shapes) == 1 else shapes[i] for i in range(num_tops)]


@register("Input")
class InputLayer(Layer):
    """The net's inputs: tops whose data the Net (or the user) writes.

    input_param { shape { dim ... } }: one shape for every top, or one per
    top; with no shape at all (allowed by Caffe) the tops keep the shape they
    have. tops: the given shapes. forward and backward do nothing.
    """

    exact_bottoms = 0
    min_tops = 1

    def layer_setup(self, bottoms, tops):
        shapes = list(self.param.input_param.shape)
        if not shapes:
            return
        chosen = _shape_per_top(self, shapes, len(tops), "input_param shape")
        for i, (top, shape) in enumerate(zip(tops, chosen)):
            top.reshape(_dims(self, shape, f"input_param shape for top '{self.top_name(i)}'"))

    def reshape(self, bottoms, tops):
        # Sized in setup; a later reshape by the Net's user must stick.
        pass

    def forward_cpu(self, bottoms, tops):
        pass

    def backward_cpu(self, tops, propagate_down, bottoms):
        pass

    forward_gpu = forward_cpu
    backward_gpu = backward_cpu


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers: constant ones once at setup, the others
    (gaussian, uniform, ...) at setup and with fresh values on every forward
    (Caffe refills only the non-constant ones).

    dummy_data_param:
      data_filler: none (every top constant 0), one for every top, or one per top;
      shape: one BlobShape for every top or one per top, or else the legacy
        num / channels / height / width fields, each given once or once per
        top, making 4-D tops (N, C, H, W).
    Values are drawn on the host from ``self.generator`` (seeded from the
    layer's seed, so CPU and GPU nets draw the same numbers) and copied to
    the tops' device. No backward.
    """

    random_state_attributes = ("generator",)

    exact_bottoms = 0
    min_tops = 1

    def layer_setup(self, bottoms, tops):
        p = self.param.dummy_data_param
        num_tops = len(tops)
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, num_tops):
            raise self.definition_error(
                f"dummy_data_param data_filler must be given 0 times, once, or once "
                f"per top ({num_tops} top(s)), found {len(fillers)}")
        # With no filler every top is the constant 0 (FillerParameter defaults).
        self.fillers = [fillers[0] if len(fillers) == 1 else fillers[i] if fillers else None
                        for i in range(num_tops)]
        # Everything drawn by this layer comes from one generator, so
        # successive forwards give fresh values and a run is reproducible.
        self.generator = self.rng(0)

        # Every top is filled here, the random ones too, so the tops hold
        # valid values before the first forward and a bad filler is reported
        # while the net is built.
        for i, (top, shape) in enumerate(zip(tops, self._top_shapes(p, num_tops))):
            top.reshape(shape)
            try:
                self._fill(i, top)
            except NetDefinitionError as exc:
                raise self.definition_error(
                    f"data_filler for top '{self.top_name(i)}': {exc}") from exc

    def _top_shapes(self, p, num_tops):
        legacy = {name: list(getattr(p, name)) for name in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if len(p.shape):
                raise self.definition_error(
                    "dummy_data_param gives both shape and the legacy "
                    "num/channels/height/width fields; use one or the other")
            per_field = [_shape_per_top(self, values, num_tops, f"dummy_data_param {name}")
                         for name, values in legacy.items()]
            return [tuple(int(v[i]) for v in per_field) for i in range(num_tops)]
        if not len(p.shape):
            raise self.definition_error(
                "dummy_data_param needs a shape (or num/channels/height/width) for its tops")
        chosen = _shape_per_top(self, list(p.shape), num_tops, "dummy_data_param shape")
        return [_dims(self, s, f"dummy_data_param shape for top '{self.top_name(i)}'")
                for i, s in enumerate(chosen)]

    def _refills(self, i):
        filler = self.fillers[i]
        return filler is not None and (filler.type or "constant") != "constant"

    def _fill(self, i, top):
        filler = self.fillers[i]
        if filler is None:
            top.data.fill(0)
            return
        values = fill(filler, top.shape, self.generator)
        top.data[...] = array_module(top.data).asarray(values, dtype=top.data.dtype)

    def reshape(self, bottoms, tops):
        # Sized in setup, as in Caffe.
        pass

    def forward_cpu(self, bottoms, tops):
        for i, top in enumerate(tops):
            if self._refills(i):
                self._fill(i, top)

    def backward_cpu(self, tops, propagate_down, bottoms):
        pass

    # The values come from the host generator on both devices (the copy to
    # the GPU is the only device work), which keeps CPU and GPU nets equal.
    forward_gpu = forward_cpu
    backward_gpu = backward_cpu
