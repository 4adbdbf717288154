"""Embeddings: a blob's features for the ground-truth boxes of a dataset,
projected to 2-D and drawn as a scatter coloured by class, with thumbnails.

    found = embeddings(model, dataset, "psroipooled_cls_rois", method="tsne")
    found.points            # (n, 2)
    found.labels            # n class names
    found.picture.save("embeddings.png")

Features, one row per ground-truth box (difficult ones left out):

- a detector: the boxes, scaled to the input blob, are pinned as the RoIs
  (the proposal layer does not run) and ``blob`` must be a per-RoI blob
  (computed from ``rois``: the RoI head's pooled features, its scores...);
- a classifier: each box is cut from its image and fed as an image of its
  own (all of an image's boxes in one batch); ``blob`` is any blob.

Projection: ``"pca"``, NumPy's SVD of the centred features (each axis's
sign fixed so that its largest loading is positive); ``"tsne"``,
scikit-learn's t-SNE (the ``viz`` extra, imported only then; perplexity
``min(30, (n - 1) / 3)``, PCA initialisation, ``seed``).
"""
import dataclasses

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from detection.draw import class_colour
from detection.visualize.occlusion import pinned_forward
from detection.visualize.top_patches import read_image
from netdef.device import to_numpy
from netdef.errors import DataError

__all__ = ["Embedding", "embeddings", "pca_2d", "tsne_2d", "per_roi_blobs", "scatter_picture",
           "import_tsne"]

METHODS = ("pca", "tsne")
INSTALL = "pip install -e '.[viz]'"


@dataclasses.dataclass(frozen=True)
class Embedding:
    """points ``(n, 2)``; labels: n class names; picture: the scatter (PIL);
    features ``(n, D)`` float32; sources: n ``(image index, box)`` with the
    box ``[x1, y1, x2, y2]`` in the image's pixels."""
    points: np.ndarray
    labels: list
    picture: object
    features: np.ndarray
    sources: list


def pca_2d(features):
    """``(n, D)`` -> ``(n, 2)``: the centred features on their first two
    principal axes (zeros where there is no second axis)."""
    centred = np.asarray(features, np.float64)
    centred = centred - centred.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:2]
    largest = np.abs(axes).argmax(axis=1)
    axes = axes * np.sign(axes[np.arange(len(axes)), largest])[:, None]
    points = np.zeros((len(centred), 2))
    points[:, :len(axes)] = centred @ axes.T
    return points


def import_tsne():
    """scikit-learn's ``TSNE`` class (the viz extra), or a DataError saying
    how to install it."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise DataError(f"t-SNE needs scikit-learn, part of the viz extra: {INSTALL} "
                        "(or use PCA)") from None
    return TSNE


def tsne_2d(features, seed=0):
    """``(n, D)`` -> ``(n, 2)`` by scikit-learn's t-SNE (at least 3 points)."""
    TSNE = import_tsne()
    count = len(features)
    if count < 3:
        raise DataError(f"t-SNE needs at least 3 points, found {count} (use PCA)")
    tsne = TSNE(n_components=2, perplexity=min(30.0, (count - 1) / 3), init="pca",
                random_state=seed)
    return tsne.fit_transform(np.asarray(features, np.float64))


def per_roi_blobs(model):
    """The blobs computed from a detector's ``rois`` (its RoI head), in order."""
    found = {"rois"}
    for lp in model.net.layer_params[model.layer_index(model.rois_layer) + 1:]:
        if found.intersection(lp.bottom):
            found.update(lp.top)
    splits = {t for lp in model.net.layer_params if lp.type == "Split" for t in lp.top}
    return [name for name in model.net.blobs if name in found and name not in splits]


def _check(model, blob, method):
    if method not in METHODS:
        raise DataError(f"embeddings: unknown method '{method}' (methods: pca, tsne)")
    if method == "tsne":
        import_tsne()  # a missing extra fails before the pass over the dataset
    if model.kind == "detector":
        valid = per_roi_blobs(model)
        if blob not in valid:
            what = "has no blob" if blob not in model.net.blobs else "has no per-RoI blob"
            raise DataError(f"embeddings: the detector {what} '{blob}' (per-RoI blobs: "
                            f"{', '.join(valid)})")
    else:
        model.check_blob(blob)


def _detector_features(model, image, boxes, blob):
    prepared = model.prepare(image)
    rois = np.zeros((len(boxes), 5), np.float32)
    rois[:, 1:] = boxes * prepared.scale
    pinned_forward(model, prepared.inputs, rois)
    return model.net.blobs[blob].data


def _classifier_features(model, image, boxes, blob):
    crops = [image[int(y1):int(y2) + 1, int(x1):int(x2) + 1] for x1, y1, x2, y2 in boxes]
    data = np.concatenate([model.prepare(c).inputs[model.input_blob] for c in crops])
    model.net.forward(**{model.input_blob: data})
    return model.net.blobs[blob].data


def _thumbnail(image, box, size):
    x1, y1, x2, y2 = (int(v) for v in box)
    crop = Image.fromarray(np.ascontiguousarray(image[y1:y2 + 1, x1:x2 + 1]))
    crop.thumbnail((size, size), Image.BILINEAR)
    return crop


def _gather(model, dataset, blob, limit, progress, thumb):
    """Features, labels, sources and thumbnails of the dataset's boxes."""
    records = list(dataset.records)[:limit] if limit is not None else list(dataset.records)
    run = _detector_features if model.kind == "detector" else _classifier_features
    features, labels, sources, thumbs = [], [], [], []
    for index, record in enumerate(records):
        keep = ~record.difficult
        boxes, classes = record.boxes[keep], record.labels[keep]
        if len(boxes):
            image = read_image(record.path)
            # a copy: the blob's storage is overwritten by the next image
            found = np.array(to_numpy(run(model, image, boxes, blob)), np.float32)
            features.append(found.reshape(len(boxes), -1))
            labels += [dataset.classes[c] for c in classes]
            sources += [(index, tuple(float(v) for v in box)) for box in boxes]
            thumbs += [_thumbnail(image, box, thumb) for box in boxes]
        if progress is not None:
            progress(index + 1, len(records))
    if not features:
        raise DataError(f"embeddings: no ground-truth boxes in the {len(records)} image(s) read")
    return np.concatenate(features), labels, sources, thumbs


def embeddings(model, dataset, blob, method="pca", limit=None, progress=None, seed=0,
               size=720, thumb=32):
    """Features of ``blob`` for the ground-truth boxes of ``dataset`` (a
    ``DetectionDataset``; its first ``limit`` images) projected to 2-D by
    ``method`` (``"pca"`` or ``"tsne"``), as an :class:`Embedding` whose
    picture is ``size`` pixels square with ``thumb``-pixel thumbnails.
    progress: ``callable(done, total)`` after each image."""
    _check(model, blob, method)
    features, labels, sources, thumbs = _gather(model, dataset, blob, limit, progress, thumb)
    points = pca_2d(features) if method == "pca" else tsne_2d(features, seed)
    title = f"{blob}: {len(points)} boxes, {'PCA' if method == 'pca' else 't-SNE'}"
    picture = scatter_picture(points, labels, list(dataset.classes), thumbs, title, size)
    return Embedding(points, labels, picture, features, sources)


def _canvas_positions(points, size, margin):
    low, high = points.min(axis=0), points.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return np.rint(margin + (points - low) / span * (size - 2 * margin)).astype(int)


def _legend_rows(names, font, width):
    """``[(x, row, name)]``: legend entries laid out left to right, wrapped."""
    placed, x, row = [], 8, 0
    for name in names:
        step = 18 + int(font.getlength(name)) + 14
        if x + step > width and x > 8:
            x, row = 8, row + 1
        placed.append((x, row, name))
        x += step
    return placed


def scatter_picture(points, labels, classes, thumbs, title, size=720):
    """The scatter, ``size`` pixels square under a header (title and a
    legend of the classes present): one dot per point in its class's colour
    (``detection.draw.class_colour``), thumbnails framed in that colour
    where they do not cover one already drawn."""
    font = ImageFont.load_default()
    present = [c for c in classes if c in set(labels)]
    legend = _legend_rows(present, font, size)
    header = 26 + 14 * (legend[-1][1] + 1 if legend else 0)
    canvas = Image.new("RGB", (size, size + header), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 6), title, fill=(0, 0, 0), font=font)
    for x, row, name in legend:
        top = 24 + 14 * row
        draw.rectangle((x, top, x + 10, top + 10), fill=class_colour(name, classes))
        draw.text((x + 16, top - 1), name, fill=(0, 0, 0), font=font)
    margin = max(max(t.size) for t in thumbs) // 2 + 4 if thumbs else 8
    where = _canvas_positions(np.asarray(points, np.float64), size, margin) + [0, header]
    taken, cell = set(), 2 * margin
    for (x, y), name, picture in zip(where, labels, thumbs):
        if (x // cell, y // cell) in taken:
            continue  # keep the picture readable: one thumbnail per cell
        taken.add((x // cell, y // cell))
        w, h = picture.size
        left, top = x - w // 2, y - h // 2
        draw.rectangle((left - 2, top - 2, left + w + 1, top + h + 1),
                       fill=class_colour(name, classes))
        canvas.paste(picture, (left, top))
    for (x, y), name in zip(where, labels):
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=class_colour(name, classes),
                     outline=(0, 0, 0))
    return canvas
