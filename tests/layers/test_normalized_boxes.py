"""layers.boxes.normalized_boxes / pixel_boxes: the single-stage detectors'
coordinate convention (xmax = (x2 + 1) / W)."""
import numpy as np

from layers.boxes import normalized_boxes, pixel_boxes


def test_whole_image_is_the_unit_square():
    assert np.array_equal(normalized_boxes([[0, 0, 99, 49]], 100, 50), [[0, 0, 1, 1]])


def test_hand_computed_box():
    got = normalized_boxes([[10, 5, 20, 30]], 100, 50)
    np.testing.assert_allclose(got, [[0.10, 0.10, 0.21, 0.62]], rtol=0, atol=1e-15)


def test_round_trip_and_clipping():
    rng = np.random.default_rng(0)
    x1, y1 = rng.integers(0, 60, 20), rng.integers(0, 30, 20)
    boxes = np.stack([x1, y1, x1 + rng.integers(0, 39, 20), y1 + rng.integers(0, 19, 20)], 1)
    np.testing.assert_allclose(pixel_boxes(normalized_boxes(boxes, 100, 50), 100, 50), boxes,
                               atol=1e-12)
    assert np.array_equal(pixel_boxes([[-0.5, -0.1, 1.7, 1.2]], 100, 50), [[0, 0, 99, 49]])
