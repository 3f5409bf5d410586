"""Evaluation of trained generators: FID/KID, segmentation scores (mIoU, pixel accuracy), sample grids.

- ``features``: FID/KID feature extractors (the FID Inception from a weights file, or a seeded tiny CNN);
- ``metrics``: FID/KID from features (torchmetrics), dataset-level confusion matrix and mIoU;
- ``segmenter``: segmentation networks and the train-segmenter stage (``run_train_segmenter``);
- ``grids``: label | generated | real sample grids;
- ``dataset``: evaluation size, resizing, ignore lists and fingerprints of a prepared dataset;
- ``stage``: the evaluate stage (``run_evaluate``).

Submodules are imported explicitly (``from pipeline.evaluation.stage import run_evaluate``): this
package imports nothing itself, so the CLI stays fast.
"""
