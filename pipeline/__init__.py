"""Stages and orchestration of the GauGAN pipeline: ingest, train, evaluate, register, flows."""

from pipeline.offline import set_offline_env

set_offline_env()
