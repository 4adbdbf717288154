"""AnnotatedData: Caffe-SSD's training input (images with box annotations)."""
import numpy as np

from layers.base import register
from layers.input_pipeline.minibatch import TrainingOrder
from layers.input_pipeline.prefetch import DEFAULT_DEPTH, Prefetcher
from layers.input_pipeline.ssd_minibatch import (NO_BOX_ROW, SSD_TOPS, SSDBatchBuilder,
                                                 SSDTransform, ssd_entries)
from layers.input_pipeline.staging import PinnedStaging
from layers.roi_data import RoIDataLayer
from netdef import caffe_pb2
from netdef.errors import DataError

WARP = caffe_pb2.ResizeParameter.WARP


@register("AnnotatedData")
class AnnotatedDataLayer(RoIDataLayer):
    """Minibatches of a detection dataset, as Caffe-SSD's AnnotatedData
    layer makes them (layers/input_pipeline/ssd_minibatch.py and
    ssd_augment.py say how).

    Caffe-SSD reads an LMDB of AnnotatedDatum (``data_param.source``); here
    the images come from a dataset that the trainer hands over
    (``set_dataset(dataset)``, as for RoIData: ``python -m solver.train``
    does it), and ``data_param.source`` is not read. Until a dataset is set
    the tops have their reference shapes and ``forward`` raises a
    NetDefinitionError saying to train with solver.train.

    Parameters read: ``data_param.batch_size`` (images per batch, required);
    transform_param: ``resize_param`` (``resize_mode`` WARP, ``height`` and
    ``width`` required: the images differ in size; ``interp_mode`` is
    accepted but the warp is always bilinear), ``mean_value`` (one value or
    one per BGR channel), ``scale``, ``mirror``, ``distort_param``,
    ``expand_param``, ``emit_constraint``; ``annotated_data_param.
    batch_sampler`` (crops). An absent step is off. Refused with an error
    naming the layer: other resize modes, ``resize_param.prob`` below 1,
    ``mean_file``, ``crop_size`` / ``crop_h`` / ``crop_w``, ``force_gray``,
    ``noise_param``, and an ``anno_type`` other than BBOX.

    tops: ``data`` ``(N, 3, H, W)`` BGR ``(pixel - mean_value) * scale``;
    ``label`` ``(1, 1, G, 8)`` ``[image, class, instance, xmin, ymin, xmax,
    ymax, difficult]`` in normalized coordinates, class = the dataset's
    class index (1..C), or one row of -1 for a batch without boxes.

    The class count is not a parameter (Caffe-SSD's label_map_file is not
    read): ``num_classes`` (background included) is None until the trainer
    sets it from the net's loss layers (``set_num_classes``; solver/session
    does it), then a dataset with another count is refused.

    Order and state as RoIData's (this class shares its machinery):
    the examples (one per image; images without boxes are kept, as
    Caffe-SSD keeps them) in a seeded permutation per epoch in TRAIN (in
    order in TEST), ``epoch``, ``cursor``, ``order_seed`` and ``examples``
    saved in snapshots for an exact resume; each example's random draws come
    from the minibatch's position and the example's place in it, so a run
    repeats and data-parallel ranks draw as one process would. Prefetched in
    a background thread (``prefetch`` is always on), staged in pinned memory
    on the GPU. A TEST-phase AnnotatedData is not needed for evaluation
    (the test net takes an Input layer).

    The attributes solver.train reads: ``use_flipped`` (= ``mirror``),
    ``scales`` ``(height,)`` and ``max_size`` ``width`` (the warp's size,
    recorded as the snapshot metadata's test_scale ``[H, W]``),
    ``bbox_normalization`` None, ``skipped`` (always empty).
    """

    exact_bottoms = 0
    exact_tops = 2
    min_tops = None
    max_tops = None

    def layer_setup(self, bottoms, tops):
        self.batch_size = int(self.param.data_param.batch_size)
        if self.batch_size < 1:
            raise self.definition_error(
                f"data_param.batch_size (images per batch) must be at least 1, found "
                f"{self.batch_size}")
        self.transform = self._read_transform(self.param.transform_param,
                                              self.param.annotated_data_param)
        self.ims_per_batch = self.batch_size
        self.num_classes = None
        self.classes_from = None
        self.training = self.phase == "TRAIN"
        self.use_flipped = self.transform.mirror
        self.scales = (self.transform.height,)
        self.max_size = self.transform.width
        self.bbox_normalization = None
        self.class_agnostic = False
        self.prefetch = True
        self.order_seed = self.seed % (1 << 63)
        self.epoch = self.cursor = 0
        self.top_keys = SSD_TOPS
        self.what = "AnnotatedData"
        self._dataset = self._entries = self._expected_examples = self._pipeline = None
        self.on_error = "raise"
        self.skipped = []
        tops[0].reshape((self.batch_size, 3, self.transform.height, self.transform.width))
        tops[1].reshape((1, 1, 1, 8))
        tops[1].data[...] = tops[1].xp.asarray(NO_BOX_ROW.reshape(1, 1, 1, 8))

    def _read_transform(self, t, a):
        """The SSDTransform of transform_param ``t`` and annotated_data_param ``a``."""
        for field in ("mean_file", "noise_param"):
            if t.HasField(field):
                raise self.definition_error(f"transform_param.{field} is not supported")
        if t.crop_size or t.crop_h or t.crop_w or t.force_gray:
            raise self.definition_error(
                "transform_param crop_size / crop_h / crop_w / force_gray are not supported "
                "(crops come from annotated_data_param.batch_sampler)")
        if a.HasField("anno_type") and a.anno_type != caffe_pb2.AnnotatedDatum.BBOX:
            raise self.definition_error(
                f"annotated_data_param.anno_type must be BBOX, found "
                f"{caffe_pb2.AnnotatedDatum.AnnotationType.Name(a.anno_type)}")
        r = t.resize_param
        if not t.HasField("resize_param") or r.height < 1 or r.width < 1:
            raise self.definition_error(
                "needs transform_param.resize_param with height and width (the images of a "
                f"dataset differ in size and are warped to one), found height {r.height}, "
                f"width {r.width}")
        if r.resize_mode != WARP:
            raise self.definition_error(
                f"transform_param.resize_param.resize_mode must be WARP, found "
                f"{caffe_pb2.ResizeParameter.Resize_mode.Name(r.resize_mode)} (not supported)")
        if r.prob < 1:
            raise self.definition_error(
                f"transform_param.resize_param.prob must be 1 (every image is warped), "
                f"found {r.prob:g}")
        mean = list(t.mean_value) or [0.0]
        if len(mean) not in (1, 3):
            raise self.definition_error(
                f"transform_param.mean_value takes 1 value or 3 (B, G, R), found {len(mean)}")
        expand = None
        if t.HasField("expand_param"):
            expand = (float(t.expand_param.prob), float(t.expand_param.max_expand_ratio))
            if expand[1] < 1:
                raise self.definition_error(
                    f"expand_param.max_expand_ratio must be at least 1, found {expand[1]:g}")
        self._check_samplers(a.batch_sampler)
        emit = ((int(t.emit_constraint.emit_type), float(t.emit_constraint.emit_overlap))
                if t.HasField("emit_constraint") else None)
        return SSDTransform(
            height=int(r.height), width=int(r.width),
            mean=tuple(float(v) for v in np.broadcast_to(mean, 3)), scale=float(t.scale),
            mirror=bool(t.mirror), distort=t.distort_param if t.HasField("distort_param") else None,
            expand=expand, samplers=tuple(a.batch_sampler), emit=emit)

    def _check_samplers(self, samplers):
        for i, b in enumerate(samplers):
            s = b.sampler
            if not (0 < s.min_scale <= s.max_scale <= 1):
                raise self.definition_error(
                    f"batch_sampler {i}: needs 0 < min_scale <= max_scale <= 1, found "
                    f"{s.min_scale:g}, {s.max_scale:g}")
            if not (0 < s.min_aspect_ratio <= s.max_aspect_ratio):
                raise self.definition_error(
                    f"batch_sampler {i}: needs 0 < min_aspect_ratio <= max_aspect_ratio, found "
                    f"{s.min_aspect_ratio:g}, {s.max_aspect_ratio:g}")

    def set_num_classes(self, count, source="the net's loss layers"):
        """The class count (background included) the net's loss layers use;
        ``set_dataset`` checks the dataset against it. ``source`` says where
        it comes from, for messages (``classes_from``)."""
        self.num_classes = int(count)
        self.classes_from = source

    def set_dataset(self, dataset, proposals=None, on_error=None):
        """Train on ``dataset`` (a DetectionDataset, or anything with
        ``records``, ``name``, ``num_classes``); ``on_error`` as RoIData's.
        DataError for proposals (SSD takes none), a class count other than
        ``num_classes`` or fewer images than ``batch_size``."""
        name = getattr(dataset, "name", "dataset")
        if proposals is not None:
            raise DataError(f"{self.where}: proposals were given; SSD's data layer takes none")
        on_error = on_error or getattr(dataset, "on_error", "raise")
        if on_error not in ("raise", "skip"):
            raise DataError(f"{self.where}: on_error must be 'raise' or 'skip', "
                            f"found {on_error!r}")
        classes = getattr(dataset, "num_classes", None)
        if classes is not None and self.num_classes is not None and classes != self.num_classes:
            raise DataError(
                f"{self.where}: dataset '{name}' has {classes} classes (background included), "
                f"{self.classes_from} is {self.num_classes}")
        records = list(dataset.records)
        if len(records) < self.batch_size:
            raise DataError(f"{self.where}: dataset '{name}' has {len(records)} image(s), "
                            f"fewer than data_param.batch_size {self.batch_size}")
        self._stop_pipeline()
        self._dataset, self._entries, self.on_error = dataset, ssd_entries(records), on_error
        self._check_resume()

    def _start_pipeline(self):
        order = TrainingOrder(self._entries.horizontal, self.batch_size, self.order_seed,
                              shuffle=self.training, aspect_grouping=False)
        build = SSDBatchBuilder(self._dataset.records, self._entries, self.transform,
                                name=self.where, on_error=self.on_error)
        self._staging = PinnedStaging(self.device, self.dtype)
        self._pipeline = Prefetcher(self._staging.wrap(build), order.plans(self.epoch, self.cursor),
                                    depth=DEFAULT_DEPTH if self.prefetch else 0,
                                    name=f"{self.name} prefetch")
