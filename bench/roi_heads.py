"""Speed of the R-FCN detection head layers at ResNet-101 shapes.

    python -m bench.roi_heads [--gpu] [--repeat N] [--all]

A 600 x 1000 image at stride 16 gives a 38 x 63 map; R-FCN pools 300 RoIs
(test-time proposals) with k = 7 and spatial_scale 1/16 from a 1029-channel
class score map (21 classes x 7 x 7) and a 392-channel box map (class-agnostic,
8 x 7 x 7). Reported: PSROIPooling forward and backward in milliseconds (best
of N), and each as a multiple of one copy of its score map measured in the
same run (the least any pass over the map can cost). ``--all`` adds
PSROIAlign at the same shapes, and ROIPooling / ROIAlign at Faster R-CNN
VGG16 shapes (512 channels, 7 x 7 bins).

The helpers (``rfcn_rois``, ``time_layer``, ``print_rows``) are meant for
other head-layer timings (Proposal, AnchorTarget, the backbone fraction).
"""
import argparse

import numpy as np

from bench.gemm import array_module, best_time

IMAGE_H, IMAGE_W, STRIDE = 600, 1000, 16
MAP_H, MAP_W = 38, 63            # ceil(600 / 16), ceil(1000 / 16)
NUM_ROIS = 300
K = 7
RFCN_CASES = [  # (name, output_dim): the cls and the class-agnostic bbox score maps
    ("cls 21x7x7=1029ch", 21),
    ("bbox 8x7x7=392ch", 8),
]


def rfcn_rois(num=NUM_ROIS, image_h=IMAGE_H, image_w=IMAGE_W, seed=0):
    """(num, 5) proposal-like RoIs [0, x1, y1, x2, y2] inside the image:
    log-uniform sides from 16 pixels to the image size, uniform centres."""
    rng = np.random.default_rng(seed)
    w = np.exp(rng.uniform(np.log(16), np.log(image_w), num))
    h = np.exp(rng.uniform(np.log(16), np.log(image_h), num))
    cx, cy = rng.uniform(0, image_w, num), rng.uniform(0, image_h, num)
    x1 = np.clip(cx - w / 2, 0, image_w - 1)
    x2 = np.clip(cx + w / 2, 0, image_w - 1)
    y1 = np.clip(cy - h / 2, 0, image_h - 1)
    y2 = np.clip(cy + h / 2, 0, image_h - 1)
    return np.column_stack([np.zeros(num), x1, y1, x2, y2])


def device_for(gpu):
    from netdef.device import CPU, Device
    return Device("gpu", 0) if gpu else CPU


def time_layer(spec, arrays, gpu=False, repeat=5, backward=True):
    """Best forward and backward seconds of one layer (float32) on ``arrays``.

    spec: prototxt text of the layer; arrays: host arrays of its bottoms.
    Backward propagates to every floating bottom the layer allows. Returns
    ``(forward_s, backward_s or None)``.
    """
    from netdef.gradcheck import build_layer, setup_layer
    xp = array_module(gpu)
    layer = build_layer(spec, device=device_for(gpu), dtype=np.float32)
    host = [np.asarray(a, dtype=np.float32) for a in arrays]
    bottoms, tops = setup_layer(layer, [xp.asarray(a) for a in host])
    forward_s = best_time(lambda: layer.forward(bottoms, tops), xp, repeat)
    if not backward:
        return forward_s, None
    rng = np.random.default_rng(1)
    for t in tops:
        t.diff[...] = xp.asarray(rng.standard_normal(t.shape).astype(np.float32))
    propagate = [layer.allow_force_backward(i) for i in range(len(bottoms))]
    backward_s = best_time(lambda: layer.backward(tops, propagate, bottoms), xp, repeat)
    return forward_s, backward_s


def copy_time(shape, gpu=False, repeat=5):
    """Best seconds of one float32 copy of an array of ``shape``: the yardstick."""
    xp = array_module(gpu)
    a = xp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    b = xp.empty_like(a)
    return best_time(lambda: xp.copyto(b, a), xp, repeat)


def print_rows(title, rows):
    """rows: (name, forward_s, backward_s or None, yardstick_s or None)."""
    print(title)
    print(f"  {'case':<34} {'forward ms':>11} {'backward ms':>12} {'fwd/copy':>9} {'bwd/copy':>9}")
    for name, fwd, bwd, unit in rows:
        bwd_ms = f"{bwd * 1e3:12.2f}" if bwd is not None else f"{'-':>12}"
        fr = f"{fwd / unit:9.1f}" if unit else f"{'-':>9}"
        br = f"{bwd / unit:9.1f}" if unit and bwd is not None else f"{'-':>9}"
        print(f"  {name:<34} {fwd * 1e3:11.2f} {bwd_ms} {fr} {br}")


def psroi_spec(layer_type, output_dim, extra=""):
    param = "psroi_pooling_param" if layer_type == "PSROIPooling" else "psroi_align_param"
    return (f'name: "ps" type: "{layer_type}" bottom: "score" bottom: "rois" top: "pooled" '
            f'{param} {{ spatial_scale: {1 / STRIDE} output_dim: {output_dim} '
            f'group_size: {K} {extra} }}')


def rfcn_head_rows(layer_type, gpu, repeat, extra=""):
    rng = np.random.default_rng(0)
    rois = rfcn_rois()
    rows = []
    for name, dim in RFCN_CASES:
        shape = (1, dim * K * K, MAP_H, MAP_W)
        score = rng.standard_normal(shape)
        fwd, bwd = time_layer(psroi_spec(layer_type, dim, extra), [score, rois], gpu, repeat)
        rows.append((f"{layer_type} {name}", fwd, bwd, copy_time(shape, gpu, repeat)))
    return rows


def vgg_head_rows(gpu, repeat):
    """ROIPooling and ROIAlign at Faster R-CNN VGG16 shapes: 512 x 38 x 63, 7 x 7."""
    shape = (1, 512, MAP_H, MAP_W)
    features = np.random.default_rng(0).standard_normal(shape)
    rois = rfcn_rois()
    unit = copy_time(shape, gpu, repeat)
    rows = []
    for layer_type, param in (("ROIPooling", "roi_pooling_param"), ("ROIAlign", "roi_align_param")):
        spec = (f'name: "r" type: "{layer_type}" bottom: "feat" bottom: "rois" top: "pooled" '
                f'{param} {{ pooled_h: 7 pooled_w: 7 spatial_scale: {1 / STRIDE} }}')
        fwd, bwd = time_layer(spec, [features, rois], gpu, repeat)
        rows.append((f"{layer_type} 512ch 7x7", fwd, bwd, unit))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run on GPU 0 through CuPy")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timing (best is kept)")
    parser.add_argument("--all", action="store_true",
                        help="also PSROIAlign, ROIPooling and ROIAlign")
    args = parser.parse_args(argv)
    where = "GPU 0 (CuPy)" if args.gpu else "CPU (NumPy)"
    print(f"R-FCN ResNet-101 head, {IMAGE_H}x{IMAGE_W} image, {MAP_H}x{MAP_W} map, "
          f"{NUM_ROIS} RoIs, k={K}, float32, {where}, best of {args.repeat}")
    rows = rfcn_head_rows("PSROIPooling", args.gpu, args.repeat)
    if args.all:
        rows += rfcn_head_rows("PSROIAlign", args.gpu, args.repeat, "sampling_ratio: 2")
        rows += vgg_head_rows(args.gpu, args.repeat)
    print_rows("(x/copy: multiples of one copy of the layer's input map, same run)", rows)


if __name__ == "__main__":
    main()
