"""R-CNN's test time next to Fast R-CNN's, the seed papers' point: the same
images and proposals, one CNN pass per warped region against one pass per
image plus RoI pooling.

    python -m bench.rcnn_test_time --proposals out/rcnn_tiny/ss_test.npz [--images 20]
        [--rcnn prototxt/rcnn_tiny.prototxt] [--fast prototxt/fast_rcnn_tiny.prototxt]
        [--max-proposals 300] [--data DIR] [--split test]

Both nets run with their initial (random) weights unless ``--rcnn-weights``
/ ``--fast-weights`` are given: the time does not depend on them. The two
detectors alternate image by image in one process, so both see the same
machine load; medians per image are reported.
"""
import argparse
import sys
import time

import numpy as np

from detection.datasets import load_dataset
from detection.datasets.synthetic import ensure_dataset
from detection.detector import find_data_layer_scale, im_detect
from detection.proposals import Proposals
from detection.region_detector import RegionDetector, crop_settings
from layers.input_pipeline.preprocess import load_image_bgr
from netdef.net import Net


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.rcnn_test_time")
    parser.add_argument("--proposals", required=True)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rcnn", default="prototxt/rcnn_tiny.prototxt")
    parser.add_argument("--rcnn-weights")
    parser.add_argument("--fast", default="prototxt/fast_rcnn_tiny.prototxt")
    parser.add_argument("--fast-weights")
    parser.add_argument("--max-proposals", type=int, default=300)
    parser.add_argument("--data")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    test = load_dataset(args.data or ensure_dataset(), args.split)
    boxes = Proposals.load(args.proposals).for_dataset(test, args.proposals)
    rcnn = RegionDetector(Net(args.rcnn, "TEST", weights=args.rcnn_weights, seed=0),
                          crop_settings(args.rcnn), max_proposals=args.max_proposals)
    fast = Net(args.fast, "TEST", weights=args.fast_weights, seed=0)
    scale, max_size = find_data_layer_scale(args.fast)
    times, count = {"rcnn": [], "fast": []}, 0
    for record, proposals in list(zip(test.records, boxes))[:args.images]:
        image = load_image_bgr(record.path)
        proposals = proposals[:args.max_proposals]
        count += len(proposals)
        started = time.perf_counter()
        rcnn.im_detect(image, proposals)
        times["rcnn"].append(time.perf_counter() - started)
        started = time.perf_counter()
        im_detect(fast, image, scale, max_size, None, proposals)
        times["fast"].append(time.perf_counter() - started)
    r, f = np.median(times["rcnn"]), np.median(times["fast"])
    print(f"{args.images} images, {count / max(args.images, 1):.0f} proposals per image: "
          f"R-CNN {r:.3f} s/image, Fast R-CNN {f:.3f} s/image (medians), R-CNN / Fast "
          f"R-CNN {r / f:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
