"""deploy/ and prefect.yaml, parsed (no Docker engine, scheduler or cluster here): the structure holds,
and every command is a real command of the pinned mlflow, prefect, torchrun and gaugan-pipeline.

The server commands also run for real: tests/team_stack.py starts the compose services' commands.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from team_stack import COMPOSE, REPO, compose_service

DEPLOY = REPO / "deploy"
SLURM = DEPLOY / "slurm" / "train.sbatch"
K8S = DEPLOY / "kubernetes" / "train-job.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def mlflow_server_args(args: list[str]) -> dict:
    """``mlflow server`` options as mlflow's own CLI parses them (an unknown option fails)."""
    from mlflow.cli import server

    assert args[:2] == ["mlflow", "server"], args
    return server.make_context("server", list(args[2:])).params


def prefect_args(args: list[str]):
    """A prefect command line as prefect's own CLI (cyclopts) binds it; an unknown option fails."""
    import prefect.cli  # noqa: F401 - registers the commands
    from prefect.cli._app import _app

    assert args[0] == "prefect", args
    tokens = [a for a in args[1:] if a != "--no-prompt"]  # a session flag of the root command
    command, bound, _ = _app.parse_args(tokens, exit_on_error=False, print_error=False)
    return command, bound.arguments


def gaugan_pipeline_args(args: list[str]) -> dict:
    """A gaugan-pipeline command line as its typer CLI parses it."""
    import typer

    from pipeline.cli import app

    assert args[0] == "gaugan-pipeline", args
    command, rest = typer.main.get_command(app), list(args[1:])
    while hasattr(command, "commands"):  # a group (`flow alerts`: the command alerts of the group flow)
        name, rest = rest[0], rest[1:]
        found = command.get_command(command.make_context(name, [], resilient_parsing=True), name)
        assert found is not None, f"gaugan-pipeline has no command {name!r}"
        command = found
    return command.make_context(command.name or "", rest).params


def torchrun_args(args: list[str]):
    from torch.distributed.run import get_args_parser

    assert args[0] == "torchrun", args
    return get_args_parser().parse_args(args[1:])


# ------------------------------------------------------------------------------------------------
# compose


def test_compose_has_the_team_services_with_health_checks_volumes_and_order():
    spec = compose()
    services = spec["services"]
    assert {"postgres", "mlflow", "prefect-server", "prefect-worker", "deploy-flows"} <= set(services)
    assert re.search(r"^  # app:$", COMPOSE.read_text(), re.M), "the placeholder for the app service"
    for name, service in services.items():
        one_shot = service.get("restart") == "no"
        if not one_shot:
            assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            wanted = (
                "service_completed_successfully" if services[dependency].get("restart") == "no" else ("service_healthy")
            )
            assert condition == {"condition": wanted}, (name, dependency)
            if wanted == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                assert source in spec["volumes"], f"{name}: volume {source} is not declared"
            elif source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in deploy/"
    assert services["mlflow"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["prefect-worker"]["depends_on"].keys() == {"prefect-server", "mlflow"}
    assert "postgres-data" in spec["volumes"] and "mlflow-artifacts" in spec["volumes"]


def test_compose_health_checks_ask_the_ports_the_servers_listen_on():
    for name, port in (("mlflow", "5000"), ("prefect-server", "4200")):
        service = compose_service(name)
        assert service["command"][service["command"].index("--port") + 1] == port
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/" in check and check.startswith("CMD python -c")
    worker = compose_service("prefect-worker")
    port = worker["environment"]["PREFECT_WORKER_WEBSERVER_PORT"]
    assert f"http://127.0.0.1:{port}/health" in " ".join(worker["healthcheck"]["test"])
    assert "--with-healthcheck" in worker["command"]


def test_compose_postgres_holds_both_servers_databases():
    init = (DEPLOY / "postgres" / "init-databases.sql").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+);", init))
    mlflow = compose_service("mlflow")["environment"]["MLFLOW_BACKEND_STORE_URI"]
    prefect = compose_service("prefect-server")["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert mlflow.startswith("postgresql://gaugan:") and mlflow.endswith("@postgres:5432/mlflow")
    assert prefect.startswith("postgresql+asyncpg://gaugan:") and prefect.endswith("@postgres:5432/prefect")
    assert created == {"mlflow", "prefect"}
    postgres = compose()["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "gaugan"
    assert "POSTGRES_PASSWORD:?" in postgres["environment"]["POSTGRES_PASSWORD"]  # no default password


def test_compose_mlflow_command_is_mlflow_servers_own():
    from mlflow.cli import server
    from mlflow.environment_variables import MLFLOW_SERVER_ALLOWED_HOSTS, MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    service = compose_service("mlflow")
    params = mlflow_server_args(service["command"])
    assert params["serve_artifacts"] is True and params["artifacts_destination"] == "/mlartifacts"
    assert params["host"] == "0.0.0.0"
    env_options = {p.envvar: p.name for p in server.params if getattr(p, "envvar", None)}
    assert env_options["MLFLOW_BACKEND_STORE_URI"] == "backend_store_uri"
    assert {MLFLOW_SERVER_ALLOWED_HOSTS.name, MLFLOW_SERVER_ENABLE_JOB_EXECUTION.name} <= set(service["environment"])
    assert "mlflow:5000" in service["environment"][MLFLOW_SERVER_ALLOWED_HOSTS.name].split(",")
    assert any(v.endswith("/mlartifacts") for v in service["volumes"])


def test_compose_prefect_commands_and_settings_are_prefects_own(monkeypatch):
    from prefect.settings import Settings

    _, server = prefect_args(compose_service("prefect-server")["command"])
    assert server == {"host": "0.0.0.0", "port": 4200}
    _, worker = prefect_args(compose_service("prefect-worker")["command"])
    assert worker == {"work_pool_name": "gaugan", "worker_type": "process", "with_healthcheck": True}
    deploy = compose_service("deploy-flows")["command"]
    assert deploy[:2] == ["sh", "-c"]
    pool, deploy_all, alerts = (shlex.split(part.strip("() ")) for part in deploy[2].split("&&"))
    inspect, create = (words[: words.index(">")] if ">" in words else words for words in " ".join(pool).split("||"))
    assert prefect_args(shlex.split(inspect))[1] == {"name": "gaugan"}
    assert prefect_args(shlex.split(create))[1] == {"name": "gaugan", "type": "process"}
    assert prefect_args(deploy_all)[1] == {"deploy_all": True}
    assert gaugan_pipeline_args(alerts) == {"params": Path("params.yaml"), "url": None}
    # the environment names are Prefect settings: loading them gives the values
    env = {
        **compose_service("prefect-server")["environment"],
        **compose_service("prefect-worker")["environment"],
    }
    env.pop("MLFLOW_TRACKING_URI")
    env.pop("GAUGAN_WORKSPACE")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.server.database.connection_url.get_secret_value() == env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert settings.api.url == "http://prefect-server:4200/api"
    assert settings.server.ui.api_url == env["PREFECT_UI_API_URL"]
    assert settings.worker.webserver.port == int(env["PREFECT_WORKER_WEBSERVER_PORT"])
    assert settings.server.analytics_enabled is False


def test_compose_gpu_override_reserves_gpus_for_the_worker():
    override = yaml.safe_load((DEPLOY / "compose.gpu.yaml").read_text())
    (device,) = override["services"]["prefect-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert set(override["services"]) <= set(compose()["services"])


# ------------------------------------------------------------------------------------------------
# prefect.yaml


def test_prefect_yaml_deploys_both_flows_on_the_gaugan_pool():
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.importtools import import_object

    from pipeline.orchestration.flows import NEW_DATA_EVENT, dataset_resource_id

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    (pull,) = spec["pull"]
    ((step, inputs),) = pull.items()
    assert import_object(step) is not None and inputs == {"directory": "{{ $GAUGAN_WORKSPACE }}"}
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"gaugan-pipeline", "gaugan-retrain"}
    for name, deployment in deployments.items():
        assert deployment["work_pool"]["name"] == "gaugan"
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert flow.name == name
        assert set(deployment["parameters"]) <= set(flow.parameters.properties)
    retrain = deployments["gaugan-retrain"]
    (schedule,) = retrain["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    (trigger,) = retrain["triggers"]
    parsed = DeploymentEventTrigger.model_validate({k: v for k, v in trigger.items() if k != "type"})
    assert parsed.expect == {NEW_DATA_EVENT}
    pattern = trigger["match"]["prefect.resource.id"]
    assert fnmatch.fnmatchcase(dataset_resource_id("/srv/anyone/gaugan"), pattern)
    assert set(parsed.parameters) <= set(load_flow_from_entrypoint(retrain["entrypoint"]).parameters.properties)


# ------------------------------------------------------------------------------------------------
# SLURM and Kubernetes


def slurm_torchrun() -> list[str]:
    """The torchrun command line of the batch script, as bash expands it on a node of a 2-node job."""
    env = dict(os.environ, SLURM_NNODES="2", SLURM_JOB_ID="77", SLURM_JOB_NODELIST="gpu[01-02]")
    body = SLURM.read_text().split("srun ", 1)[1]
    words = subprocess.run(
        ["bash", "-c", f"head_node=gpu01; gpus_per_node=8; rdzv_port=29400; printf '%s\\n' {body}"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    words = [w for w in words if w]
    return words[words.index("torchrun") :]


def test_slurm_script_is_valid_bash_and_runs_the_train_stage_with_torchrun():
    subprocess.run(["bash", "-n", str(SLURM)], check=True)
    text = SLURM.read_text()
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert directives["nodes"] == "2" and directives["ntasks-per-node"] == "1"
    cmd = slurm_torchrun()
    args = torchrun_args(cmd)
    assert args.nnodes == "2" and args.nproc_per_node == "8" and args.no_python
    assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == "gpu01:29400" and args.rdzv_id == "gaugan-77"
    assert [args.training_script, *args.training_script_args] == ["gaugan-pipeline", "train", "--params", "params.yaml"]
    assert gaugan_pipeline_args(["gaugan-pipeline", *args.training_script_args]) == {
        "params": Path("params.yaml"),
        "resume": "auto",
    }


def test_kubernetes_indexed_job_and_headless_service_agree():
    service, job = yaml.safe_load_all(K8S.read_text())
    assert service["kind"] == "Service" and job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert pod["subdomain"] == service["metadata"]["name"]
    (container,) = pod["containers"]
    assert container["command"] == ["tini", "--"]
    args = torchrun_args(container["args"])
    assert int(args.nnodes) == spec["completions"]
    assert int(args.nproc_per_node) == container["resources"]["limits"]["nvidia.com/gpu"]
    host, port = args.rdzv_endpoint.split(":")
    assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"  # pod 0's DNS name
    assert int(port) == service["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    assert args.rdzv_backend == "c10d" and args.no_python
    assert gaugan_pipeline_args([args.training_script, *args.training_script_args])["params"] == Path("params.yaml")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["workspace"] == container["workingDir"] and mounts["shm"] == "/dev/shm"
    assert {v["name"] for v in pod["volumes"]} == set(mounts)


@pytest.mark.parametrize("path", [COMPOSE, DEPLOY / "compose.gpu.yaml", K8S, REPO / "prefect.yaml"])
def test_deploy_files_are_plain_yaml(path):
    assert list(yaml.safe_load_all(path.read_text()))
