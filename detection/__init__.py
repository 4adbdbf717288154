"""The detection library: datasets (VOC, COCO, the synthetic set), inference
(``detection.detector``), evaluation (VOC and COCO AP), proposals files,
drawing and training-curve plotting. The entry points in ``solver/`` use it."""
