# syntax=docker/dockerfile:1.7
# The gaugan-pipeline tool image: the package and its dependencies; the project (dvc.yaml, params.yaml,
# data, models, mlflow.db) is a checkout mounted at /workspace.
#
#   docker build -t gaugan-pipeline .                                    (CPU torch)
#   docker build -t gaugan-pipeline:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm -v "$PWD:/workspace" gaugan-pipeline demo
#   docker run --rm --gpus all --ipc=host -v "$PWD:/workspace" gaugan-pipeline:cuda flow run
#
# A host user other than uid 1000: add -u "$(id -u):$(id -g)" -e HOME=/tmp.
# The base is pinned to Debian bookworm so that the apt version pins below stay valid.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

# torch and torchvision must match the pins in pyproject.toml; the index picks the CPU or a CUDA build
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    PREFECT_HOME=/workspace/.prefect

# git: DVC needs it; tini: PID 1 that forwards signals to torchrun, dvc and the Prefect/MLflow servers
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* tini=0.19.* \
 && rm -rf /var/lib/apt/lists/* \
 && git config --system --add safe.directory '*'
RUN useradd --create-home --uid 1000 app \
 && mkdir -p /workspace \
 && chown app:app /workspace

WORKDIR /opt/gaugan-pipeline

# The largest layer first: torch from the chosen index.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" --index-url "${TORCH_INDEX}"

# Dependencies before sources: with empty stub packages, pip resolves pyproject.toml alone, so
# editing the code does not reinstall them.
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN mkdir -p gaugan pipeline \
 && touch gaugan/__init__.py pipeline/__init__.py \
 && pip install . \
 && pip uninstall -y gaugan-pipeline \
 && rm -rf build ./*.egg-info gaugan pipeline

COPY gaugan ./gaugan
COPY pipeline ./pipeline
# hadolint ignore=DL3013
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && gaugan-pipeline --help > /dev/null

USER 1000:1000
WORKDIR /workspace
ENTRYPOINT ["tini", "--", "gaugan-pipeline"]
CMD ["--help"]
