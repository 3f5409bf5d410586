"""The pipeline's stages: one module per ``dvc.yaml`` stage, each with one entry point, ``run``.

``run(params, root)`` reads like a table of contents: the settings the stage reads (``PARAMS``,
exactly the keys its ``dvc.yaml`` entry lists), then the steps by name, then the outputs. The work
lives in the helpers beside it (``pipeline.datasets``, ``pipeline.training``, ``pipeline.evaluation``,
``pipeline.registry.versions``) and in the ``gaugan`` library. The ``gaugan-pipeline`` commands that
``dvc.yaml`` runs, and through DVC the Prefect flows, call these entry points.
"""
