"""ImageData: batches of image files named in a list file (Caffe's
ImageDataLayer)."""
import numpy as np

from layers.base import register
from layers.host_batches import HostBatchLayer
from layers.input_pipeline.caffe_transform import CaffeTransform, decode_image, pad_images
from netdef.errors import DataError

# Salts of the layer's random streams (with its seed): the list order of an
# epoch, the batch's transform draws, the initial skip.
_ORDER_SALT, _TRANSFORM_SALT, _SKIP_SALT = 1, 2, 3


def read_image_list(source):
    """``[(path, label, line number)]`` of a list file of ``path label``
    lines (the label is the last space-separated field, so a path may hold
    spaces, as in Caffe; blank lines are skipped)."""
    try:
        with open(source, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise DataError(f"cannot read the image list '{source}': {exc.strerror or exc}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        path, _, label = line.rpartition(" ")
        try:
            if not path.strip():
                raise ValueError
            entries.append((path.strip(), int(label), number))
        except ValueError:
            raise DataError(f"image list '{source}' line {number}: expected 'path label' with "
                            f"an integer label, found {line!r}") from None
    if not entries:
        raise DataError(f"image list '{source}' lists no images")
    return entries


@register("ImageData")
class ImageDataLayer(HostBatchLayer):
    """Images and labels from a list file, decoded with Pillow.

    image_data_param: source (the list file, ``relative/path label`` per
    line), root_folder (prefixed to every path, as a plain string as in
    Caffe), batch_size (1), shuffle (a fresh order every epoch), rand_skip
    (skip a random number, below it, of lines at the start), new_height and
    new_width (resize every image, bilinear; both or neither), is_color
    (true: 3 channels BGR as OpenCV gives them; false: one grey channel).
    transform_param: as Caffe's (layers/input_pipeline/caffe_transform.py).

    tops: data ``(N, C, h, w)`` (transformed), label ``(N,)``. The list is
    read cyclically: a batch may end one epoch and start the next. Each
    batch's shape comes from its first image; the others must have its size
    unless cropped. ``position`` (images served so far, plus the skip) is
    the layer's random state, so a snapshot resumes with the same images,
    and each batch's random draws are keyed by it. The GPU path is the same
    host code, the batch copied into the tops' device. No backward.
    """

    random_state_attributes = ("position",)

    exact_tops = 2

    def layer_setup(self, bottoms, tops):
        p = self.param.image_data_param
        self.batch_size = int(p.batch_size)
        if self.batch_size < 1:
            raise self.definition_error("image_data_param batch_size must be positive, found 0")
        if (p.new_height > 0) != (p.new_width > 0):
            raise self.definition_error(
                "image_data_param new_height and new_width must be set together, found "
                f"new_height {p.new_height}, new_width {p.new_width}")
        self.size = (int(p.new_height), int(p.new_width)) if p.new_height > 0 else None
        self.source = p.source
        self.root_folder = p.root_folder
        self.is_color = bool(p.is_color)
        self.shuffle = bool(p.shuffle)
        self.transform = CaffeTransform(self.param.transform_param, self.phase, self.where)
        try:
            self.entries = read_image_list(p.source)
        except DataError as exc:
            raise DataError(f"{self.where}: {exc}") from None
        self.labels = np.array([label for _, label, _ in self.entries], dtype=np.int64)
        self.position = 0
        if p.rand_skip:
            skip = int(self.rng(_SKIP_SALT).integers(p.rand_skip))
            if skip >= len(self.entries):
                raise DataError(
                    f"{self.where}: rand_skip drew {skip} lines to skip, but image list "
                    f"'{self.source}' has only {len(self.entries)}")
            self.position = skip
        # As in Caffe, the tops take the shape of the first image.
        index = self._line_indices(np.array([self.position]))[0]
        shape = self._load([index])[0].shape
        self.transform.check(shape[0], [shape[1:]], lambda i: self._describe(index))
        tops[0].reshape((self.batch_size,) + self.transform.output_shape(*shape))
        tops[1].reshape((self.batch_size,))

    # -- the order ---------------------------------------------------------------
    def _order(self, epoch):
        count = len(self.entries)
        if not self.shuffle:
            return np.arange(count)
        return np.random.default_rng([self.seed, _ORDER_SALT, int(epoch)]).permutation(count)

    def _line_indices(self, positions):
        """Indices into ``self.entries`` of the images at ``positions``."""
        count = len(self.entries)
        epochs, offsets = np.divmod(positions, count)
        indices = np.empty(len(positions), dtype=np.int64)
        for epoch in np.unique(epochs):   # one or two epochs per batch
            here = epochs == epoch
            indices[here] = self._order(epoch)[offsets[here]]
        return indices

    def _describe(self, index):
        path, _, number = self.entries[index]
        return (f"image '{self.root_folder}{path}' (image list '{self.source}' "
                f"line {number})")

    def _load(self, indices):
        """The images of ``self.entries[indices]`` as ``(C, H, W)`` uint8."""
        return [decode_image(self.root_folder + self.entries[i][0], self.is_color, self.size,
                             what=f"{self.where}: {self._describe(i)}").transpose(2, 0, 1)
                for i in indices]

    # -- running -------------------------------------------------------------------
    def next_batch(self):
        """The next batch as host arrays ``(data, labels)``, advancing."""
        indices = self._line_indices(self.position + np.arange(self.batch_size))
        describe = lambda i: self._describe(indices[i])  # noqa: E731
        images, sizes = pad_images(self._load(indices), self.where, describe)
        self.transform.check(images.shape[1], sizes, describe)
        rng = np.random.default_rng([self.seed, _TRANSFORM_SALT, self.position])
        data = self.transform(images, rng, self.dtype, sizes)
        labels = self.labels[indices].astype(self.dtype)
        self.position += self.batch_size
        return data, labels
