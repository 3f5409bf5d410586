"""Reports over finished runs (not DVC stages): ``compare`` puts two models side by side.

- ``sources``: what a report reads about one model from MLflow (run, evaluation, losses, generator);
- ``charts``: matplotlib charts (per-class IoU differences, loss curves);
- ``html``: the self-contained HTML page;
- ``compare``: the ``gaugan-pipeline compare A B`` report, :func:`~pipeline.reports.compare.build_report`.
"""
