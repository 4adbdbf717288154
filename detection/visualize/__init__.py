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
own. The package exports the public functions: where a function has its
module's name (``occlusion``, ``class_model``, ``receptive_field``,
``top_patches``, ``embeddings``, ``rfcn_inside``, ``rpn_inside``), the
package's name is the function; reach the module's other names with
``from detection.visualize.occlusion import ...``. The imports below run in
dependency order so that no later submodule import rebinds such a name to
its module.
"""
from detection.visualize.model import Detection, Prepared, Target, VisualModel
from detection.visualize.overlay import (colour_map, heatmap_overlay, map_name, save_map,
                                         save_overlay, tile)
from detection.visualize.gradients import (cam, deconvnet, grad_cam, grad_cam_blobs,
                                           guided_backprop, saliency)
from detection.visualize.occlusion import occlusion
from detection.visualize.receptive_field import ReceptiveField, receptive_field, receptive_fields
from detection.visualize.top_patches import top_activations, top_patches
from detection.visualize.class_model import class_model
from detection.visualize.embeddings import Embedding, embeddings
from detection.visualize.browser import browse
from detection.visualize.rfcn_inside import rfcn_inside
from detection.visualize.rpn_inside import rpn_inside

__all__ = ["VisualModel", "Prepared", "Detection", "Target",
           "saliency", "guided_backprop", "deconvnet", "grad_cam", "cam", "grad_cam_blobs",
           "heatmap_overlay", "save_map", "save_overlay", "tile", "colour_map", "map_name",
           "occlusion", "class_model", "receptive_field", "receptive_fields", "ReceptiveField",
           "top_patches", "top_activations", "embeddings", "Embedding",
           "rfcn_inside", "rpn_inside", "browse"]
