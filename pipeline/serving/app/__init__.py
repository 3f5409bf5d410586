"""``gaugan-pipeline app``: paint a label map in the browser, get the image.

One process (FastAPI + uvicorn) serves a static page (``static/``: HTML, CSS and plain
JavaScript, no build step) and the JSON API it calls (:mod:`pipeline.serving.app.server`); the registry's
models are listed and loaded through :mod:`pipeline.serving.app.catalog`.
"""
