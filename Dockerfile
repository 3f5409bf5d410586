# syntax=docker/dockerfile:1.7
# CPU image by default; for CUDA: --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    NO_ALBUMENTATIONS_UPDATE=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* tini=0.19.* \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 app
WORKDIR /app

# The biggest layer first: torch from the chosen index (CPU or CUDA build).
RUN pip install "torch==2.14.1" "torchvision==0.29.1" --index-url "${TORCH_INDEX}"

# Dependencies before sources: a stub package lets pip resolve pyproject.toml alone.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p gaugan pipeline \
 && touch gaugan/__init__.py pipeline/__init__.py \
 && pip install . \
 && pip uninstall -y gaugan-pipeline

COPY --chown=app:app . .
# hadolint ignore=DL3013
RUN pip install --no-deps .

USER 1000:1000
ENTRYPOINT ["tini", "--", "gaugan-pipeline"]
CMD ["--help"]
