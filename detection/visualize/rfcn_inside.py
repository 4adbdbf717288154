"""R-FCN inside: how the position-sensitive score maps vote for one detection.

    picture = rfcn_inside(model, image, detection=0)
    picture.save("rfcn.png")

R-FCN scores a RoI for class ``c`` by cutting it into ``k x k`` bins and
reading bin ``(i, j)`` from its own score map, channel ``(c * k + i) * k +
j`` of the PSROIPooling layer's bottom: the map trained to respond to the
``(i, j)`` part of an object of class ``c``. Each bin's mean is its vote;
the average of the ``k x k`` votes is the class score (the Pooling AVE layer
after PSROIPooling). The picture shows, for one detection:

1. the image with the detection's box;
2. the ``k x k`` maps of its class, each around the RoI, the RoI's bins
   outlined thinly (dark) and the one bin that map gives its vote for
   outlined thickly (white) (one colour scale for all the maps);
3. the RoI assembled from the bins each map gives, and the ``k x k`` votes
   with their average, the class score.
"""
import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from detection.draw import draw_detections
from detection.visualize.browser import titled
from detection.visualize.overlay import colour_map, tile
from layers.roi_pooling import ps_pool_bounds
from netdef.device import to_numpy
from netdef.errors import DataError

__all__ = ["rfcn_inside", "PSVote", "ps_vote"]

MAP_PIXELS = 150     # the longer side of one map's picture


def _colours(values, low, high):
    """RGB uint8 ``(..., 3)`` of ``values`` on one scale from ``low`` to
    ``high`` (``overlay.colour_map``); NaN (no cell) grey."""
    values = np.asarray(values, np.float64)
    span = high - low if high > low else 1.0
    rgb = colour_map(np.nan_to_num((values - low) / span))
    rgb[np.isnan(values)] = 128
    return rgb


@dataclasses.dataclass
class PSVote:
    """One RoI's position-sensitive vote for one class.

    maps: ``(k, k, H, W)`` the class's score maps; rows, cols: ``(k, 2)``
    each bin row's ``[start, end)`` feature rows, each bin column's
    ``[start, end)`` feature columns (as PSROIPooling reads them); votes:
    ``(k, k)`` the pooled bins; score: their average as the net gives it
    (the pre-softmax class score); roi: ``(4,)`` input-blob pixels;
    spatial_scale; layer: the PSROIPooling layer's name."""
    maps: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    votes: np.ndarray
    score: float
    roi: np.ndarray
    spatial_scale: float
    layer: str


def _psroi_layer(model):
    """The index of the PSROIPooling layer the class scores come from,
    searched up the layers producing ``model.score_blob``."""
    net = model.net
    names = list(net.layer_dict)
    wanted, seen = [(model.score_blob, len(names))], []
    while wanted:
        index = _producer(net, *wanted.pop())
        if index is None or index in seen:
            continue
        seen.append(index)
        if net.layers[index].type == "PSROIPooling":
            return index
        wanted += [(blob, index) for blob in net.layer_params[index].bottom]
    raise DataError(f"rfcn: no PSROIPooling layer feeds '{model.score_blob}' in {net.source} "
                    f"(not an R-FCN detector); layers feeding it: "
                    f"{', '.join(names[i] for i in seen) or 'none'}")


def _producer(net, blob, before):
    """The index of the last layer before layer ``before`` writing ``blob``
    (an in-place layer reads what an earlier one wrote); None for an input."""
    found = None
    for index, lp in enumerate(net.layer_params[:before]):
        if blob in lp.top:
            found = index
    return found


def ps_vote(model, class_index):
    """The ``PSVote`` of class ``class_index`` for the first RoI of the
    net's last forward pass (pin the RoI first: ``model.forward(prepared,
    rois=roi)``)."""
    net = model.net
    index = _psroi_layer(model)
    layer = net.layers[index]
    features, rois = (to_numpy(b.data) for b in net.bottom_blobs[index])
    k, dim = layer.group_size, layer.output_dim
    if not 0 <= class_index < dim:
        raise DataError(f"rfcn: class index {class_index} is outside the {dim} classes of "
                        f"layer '{net.layer_params[index].name}' (0..{dim - 1})")
    height, width = features.shape[2:]
    channels = class_index * k * k + np.arange(k * k)
    maps = features[int(rois[0, 0]), channels].reshape(k, k, height, width)
    roi = rois[:1].astype(features.dtype)
    h0, h1 = ps_pool_bounds(roi[:, 2], roi[:, 4], layer.spatial_scale, k, height)
    w0, w1 = ps_pool_bounds(roi[:, 1], roi[:, 3], layer.spatial_scale, k, width)
    votes = to_numpy(net.top_blobs[index][0].data)[0, class_index]
    score = to_numpy(net.blobs[model.score_blob].data).reshape(rois.shape[0], -1)[0, class_index]
    return PSVote(maps.astype(np.float64), np.stack([h0[0], h1[0]], 1),
                  np.stack([w0[0], w1[0]], 1), votes.astype(np.float64), float(score),
                  rois[0, 1:5].astype(np.float64), layer.spatial_scale,
                  net.layer_params[index].name)


def _window(vote):
    """The feature-map window ``(r0, r1, c0, c1)`` shown around the RoI:
    its bins plus half their extent on each side (at least 2 cells)."""
    height, width = vote.maps.shape[2:]
    r0, r1 = int(vote.rows[0, 0]), int(vote.rows[-1, 1])
    c0, c1 = int(vote.cols[0, 0]), int(vote.cols[-1, 1])
    dr, dc = max(2, (r1 - r0) // 2), max(2, (c1 - c0) // 2)
    return max(0, r0 - dr), min(height, r1 + dr), max(0, c0 - dc), min(width, c1 + dc)


def _enlarged(rgb, factor):
    """An RGB array shown ``factor`` times larger, cells as squares."""
    picture = Image.fromarray(rgb)
    return picture.resize((rgb.shape[1] * factor, rgb.shape[0] * factor),
                          Image.Resampling.NEAREST)


def _cell_box(rows, cols, origin, factor):
    """Pixel rectangle of feature cells ``rows`` x ``cols`` ([start, end))."""
    r, c = origin
    return [(cols[0] - c) * factor, (rows[0] - r) * factor,
            (cols[1] - c) * factor - 1, (rows[1] - r) * factor - 1]


def _map_tiles(vote, low, high):
    """The ``k x k`` map pictures, row-major."""
    r0, r1, c0, c1 = _window(vote)
    factor = max(1, MAP_PIXELS // max(r1 - r0, c1 - c0, 1))
    k = vote.votes.shape[0]
    tiles = []
    for i in range(k):               # a loop over the k x k bins (a small fixed count)
        for j in range(k):
            picture = _enlarged(_colours(vote.maps[i, j, r0:r1, c0:c1], low, high), factor)
            draw = ImageDraw.Draw(picture)
            for a in range(k):
                for b in range(k):
                    draw.rectangle(_cell_box(vote.rows[a], vote.cols[b], (r0, c0), factor),
                                   outline=(70, 70, 70), width=1)
            draw.rectangle(_cell_box(vote.rows[i], vote.cols[j], (r0, c0), factor),
                           outline=(255, 255, 255), width=3)
            tiles.append(titled(picture, f"map ({i}, {j}): vote {vote.votes[i, j]:.2f}", 11))
    return tiles


def _assembled(vote, low, high):
    """The RoI's cells, each bin taken from its own map (later bins over
    the cells two bins share)."""
    r0, r1 = int(vote.rows[0, 0]), int(vote.rows[-1, 1])
    c0, c1 = int(vote.cols[0, 0]), int(vote.cols[-1, 1])
    mosaic = np.full((max(r1 - r0, 1), max(c1 - c0, 1)), np.nan)
    k = vote.votes.shape[0]
    for i in range(k):               # a loop over the k x k bins
        for j in range(k):
            (a, b), (c, d) = vote.rows[i], vote.cols[j]
            mosaic[a - r0:b - r0, c - c0:d - c0] = vote.maps[i, j, a:b, c:d]
    factor = max(1, MAP_PIXELS // max(mosaic.shape))
    picture = _enlarged(_colours(mosaic, low, high), factor)
    draw = ImageDraw.Draw(picture)
    for i in range(k):
        for j in range(k):
            draw.rectangle(_cell_box(vote.rows[i], vote.cols[j], (r0, c0), factor),
                           outline=(255, 255, 255), width=1)
    return picture


def _vote_grid(vote, low, high, cell=48):
    """The ``k x k`` votes as coloured cells with their values."""
    k = vote.votes.shape[0]
    picture = _enlarged(_colours(vote.votes, low, high), cell)
    draw = ImageDraw.Draw(picture)
    for i in range(k):
        for j in range(k):
            value = vote.votes[i, j]
            dark = (value - low) / (high - low if high > low else 1.0) > 0.6
            draw.text((j * cell + 4, i * cell + cell // 2 - 6), f"{value:.2f}",
                      fill=(0, 0, 0) if dark else (255, 255, 255))
    return picture


def rfcn_inside(model, image, detection=0, threshold=0.5):
    """The R-FCN picture (see the module docstring) of detection
    ``detection`` (an index into ``model.detections(image, threshold)``,
    highest score first) of ``image`` ``(H, W, 3)`` uint8 RGB. Returns a
    PIL image; DataError for a net without PSROIPooling or a detection
    index out of range (naming the valid ones)."""
    target = model.target(image, detection=detection, threshold=threshold)
    det = target.detection
    model.forward(model.prepare(image), rois=target.rois)
    vote = ps_vote(model, det.class_index)
    shown = np.concatenate([vote.maps.reshape(-1), vote.votes.reshape(-1)])
    low, high = float(shown.min()), float(shown.max())
    k = vote.votes.shape[0]
    boxed = draw_detections(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)),
                            [(det.class_name, det.score, det.box)])
    maps = tile(_map_tiles(vote, low, high), k)
    left = tile([titled(boxed, f"detection {det.index}: {det.class_name} {det.score:.2f}"),
                 titled(_assembled(vote, low, high), "the RoI assembled from the bin each "
                                                     "map gives")], 1)
    votes = titled(_vote_grid(vote, low, high),
                   f"{k} x {k} votes, mean {vote.votes.mean():.3f} = {det.class_name} score "
                   f"{vote.score:.3f}")
    return _row([left, titled(maps, f"position-sensitive maps of '{det.class_name}' "
                                    f"({vote.layer}'s bottom; colour from {low:.2f} to "
                                    f"{high:.2f}); white: the bin each map votes with"), votes])


def _row(pictures, gap=8):
    """``pictures`` side by side, tops aligned, on white."""
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    canvas = Image.new("RGB", (width, max(p.height for p in pictures)), (255, 255, 255))
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + gap
    return canvas
