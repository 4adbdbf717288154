"""The input pipeline of the RoIData layer (layers/roi_data.py).

- ``preprocess``: read an image as BGR float32, subtract the pixel means,
  resize (shorter side, longer cap), flip, pad several into one NCHW blob;
  the detection library's inference uses the same functions;
- ``minibatch``: which examples train (``select_entries``), in which order
  (``TrainingOrder``: seeded, aspect-grouped, epoch after epoch) and the
  arrays of one minibatch (``MinibatchBuilder``; the precomputed-RoI form
  samples with ``layers.detection_targets.ProposalTargetCreator``);
- ``prefetch``: building the next minibatches in a background thread;
- ``staging``: on the GPU, the prefetch thread also writes each minibatch
  into pinned host buffers, and the layer's forward copies them into the
  top blobs asynchronously (``PinnedStaging``).

The layer receives its dataset from above (``set_dataset``): anything with
``records`` (ImageRecord-like: ``image_id``, ``path``, ``width``,
``height``, ``boxes``, ``labels``, ``difficult``), ``name`` and
``num_classes``. Nothing here imports the optimizer, the detection library
or the entry points.
"""
