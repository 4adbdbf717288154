"""Training and evaluation of detectors: SGD solver, datasets, sampling, mAP."""
