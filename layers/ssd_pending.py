"""Caffe-SSD layer types whose parameters parse but that are not built yet.

Caffe-SSD's prototxt files (weiliu89/caffe, branch ssd) name these types;
their parameter messages are in the schema, so such a file parses unchanged,
and building it stops here with an error naming the layer instead of an
"unknown layer type". When one of them is implemented, its entry leaves
``PENDING`` (the registry refuses a type registered twice).
"""
from layers.base import Layer, register

#: type -> what building it would need.
PENDING = {
    "DetectionEvaluate": "SSD's in-net evaluation",
    "VideoData": "SSD's webcam / video input",
}


def _pending_class(type_name, what):
    class PendingLayer(Layer):
        __doc__ = f"Placeholder for Caffe-SSD's {type_name} ({what}): not implemented yet."

        def layer_setup(self, bottoms, tops):
            raise self.definition_error(
                f"Caffe-SSD's {type_name} layer ({what}) is not implemented yet; its "
                "parameters parse, but a net with this layer cannot be built")

        def reshape(self, bottoms, tops):  # never reached: setup raises
            raise self.definition_error(f"{type_name} is not implemented yet")

    PendingLayer.__name__ = PendingLayer.__qualname__ = f"Pending{type_name}Layer"
    return register(type_name)(PendingLayer)


for _type, _what in PENDING.items():
    _pending_class(_type, _what)
