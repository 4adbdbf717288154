"""CNN visualization and detection introspection (issue 12).

    from detection.visualize import VisualModel, grad_cam, heatmap_overlay
    model = VisualModel("prototxt/rfcn_tiny.prototxt", "rfcn_tiny_iter_4000.caffemodel")
    target = model.target(image_rgb, detection=0)
    heat = grad_cam(model, image_rgb, target)            # (H, W) in [0, 1]
    heatmap_overlay(image_rgb, heat, title=target.label).save("gradcam.png")

``model`` holds the VisualModel (inputs, targets, detections); the
gradient methods live in ``gradients``, pictures and saved maps in
``overlay``; occlusion, class models, receptive fields, top patches,
embeddings, R-FCN / RPN insides and the dataset browser in modules of their
own. Names are imported on first use, so importing the package costs
nothing and one method's optional dependency never blocks another.
"""
import importlib

#: public name -> the module (in this package) defining it
_EXPORTS = {
    "VisualModel": "model", "Prepared": "model", "Detection": "model", "Target": "model",
    "saliency": "gradients", "guided_backprop": "gradients", "deconvnet": "gradients",
    "grad_cam": "gradients", "cam": "gradients", "grad_cam_blobs": "gradients",
    "heatmap_overlay": "overlay", "save_map": "overlay", "save_overlay": "overlay",
    "tile": "overlay", "colour_map": "overlay", "map_name": "overlay",
    "occlusion": "occlusion", "class_model": "class_model",
    "receptive_field": "receptive_field", "receptive_fields": "receptive_field",
    "ReceptiveField": "receptive_field",
    "top_patches": "top_patches", "top_activations": "top_patches",
    "embeddings": "embeddings", "Embedding": "embeddings",
    "rfcn_inside": "rfcn_inside", "rpn_inside": "rpn_inside", "browse": "browser",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detection.visualize' has no attribute '{name}'")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
