"""The CLI turns user errors into one red line naming the command and the fix, and exit code 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.distributed import pick_device
from pipeline.errors import ParamsError

runner = CliRunner()


def test_notify_new_data_without_a_server_says_what_to_set(tmp_path):
    # a real process: Prefect's log handlers would keep CliRunner's closed stream for later tests
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / ".prefect")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "notify-new-data", "--repo", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "error in notify-new-data: PREFECT_API_URL is not set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_unknown_params_key_is_named_before_any_work(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"seed": 0, "trian": {"max_steps": 3}}))
    result = runner.invoke(app, ["evaluate", "--params", str(params)])
    assert result.exit_code == 1
    assert "error in params" in result.output and "trian" in result.output


def test_model_info_counts_the_reference_generators():
    result = runner.invoke(app, ["model-info", "--setting", "ade20k"])
    assert result.exit_code == 0, result.output
    # the reference ADE20K generator (shared/reference/spade_checkpoint_keys.md)
    assert "96,492,483" in result.output
    result = runner.invoke(app, ["model-info", "--setting", "ade20k", "--netG", "pix2pixhd"])
    assert result.exit_code == 0, result.output
    # NVlabs/SPADE fecacc9's Pix2PixHDGenerator with these options counts 182,886,019 too
    # (ngf 64, 4 downsamplings, 9 blocks)
    assert "pix2pixhd" in result.output and "182,886,019" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("key", ["train.device", "evaluate.device", "segmenter.device"])
def test_asking_for_cuda_without_a_gpu_names_the_setting(key):
    with pytest.raises(ParamsError, match=rf"{key} is 'cuda' but no CUDA device is visible; set {key}: auto or cpu"):
        pick_device("cuda", key=key)
    assert pick_device("auto", key=key).type == "cpu"
