"""Evaluation of trained generators: the evaluate and train-segmenter stages' helpers.

- ``inputs``: the validation split, generator, segmenter and feature extractor, loaded and checked;
- ``scoring``: one pass over the split (synthesis, features, segmentation, sample rows);
- ``report``: metrics.json, per_class_iou.csv, samples.png and the MLflow tags; ``grids``: the sample
  grids (label | generated | real) that report and the train stage draw;
- ``features``: FID/KID feature extractors (the FID Inception from a weights file, or a seeded tiny
  CNN) and the cache of real-image features;
- ``metrics``: FID/KID from features (torchmetrics), dataset-level confusion matrix and mIoU;
- ``segmentation_nets``: the segmentation architectures; ``segmenter``: the segmenter and its file;
  ``segmenter_training``: its starting weights, training images and loop.

Submodules are imported explicitly: this package imports nothing itself, so the CLI stays fast.
"""
