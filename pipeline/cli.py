"""``gaugan-pipeline``: one command per stage, plus the demo, synthesis and scheduling.

Every stage reads ``params.yaml`` (``--params``) into validated settings first. Heavy libraries
(torch, mlflow, prefect, albumentations) are imported inside the commands so ``--help`` is fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from pipeline.offline import set_offline_env

set_offline_env()

app = typer.Typer(
    name="gaugan-pipeline",
    help="Train, evaluate, version and ship GauGAN (SPADE) models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
flow_app = typer.Typer(help="Prefect flows that run the DVC stages.", no_args_is_help=True)
app.add_typer(flow_app, name="flow")

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="parameters file")


def _fail(err: BaseException, stage: str) -> None:
    typer.secho(f"error in {stage}: {err}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@contextmanager
def _reported(stage: str, *more: type[BaseException]) -> Iterator[None]:
    """The usual user errors (missing file, bad value, failed step) become one red line and exit 1."""
    try:
        yield
    except (FileNotFoundError, ValueError, RuntimeError, *more) as err:
        _fail(err, stage)


def _params(path: Path):
    from pipeline.params import ParamsError, load_params

    try:
        return load_params(path)
    except ParamsError as err:
        _fail(err, "params")


@app.command()
def ingest(
    params: Path = PARAMS_OPTION,
    format: str | None = typer.Option(
        None, "--format", help="demo|coco-stuff|ade20k|ade20k-full|spade|folder (default: data.format)"
    ),
    source: Path | None = typer.Option(None, "--source", help="raw dataset folder (default: data.source)"),
    out: Path | None = typer.Option(None, "--out", help="prepared dataset folder (default: data.out)"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="processes (default: data.workers)"),
    on_error: str | None = typer.Option(None, "--on-error", help="fail|skip (default: data.on_error)"),
) -> None:
    """Parse a raw dataset into the prepared format (labels, instances, edges, manifest)."""
    from pipeline.ingest import IngestError, run_ingest
    from pipeline.params import DataSettings

    if params.is_file():
        data = _params(params).data
    elif format is None or out is None:
        _fail(FileNotFoundError(f"{params} not found; pass --format, --source and --out, or --params PATH"), "ingest")
    else:
        data = DataSettings()
    if on_error not in (None, "fail", "skip"):
        _fail(ValueError(f"--on-error must be 'fail' or 'skip', got {on_error!r}"), "ingest")
    try:
        stats = run_ingest(
            format or data.format,
            Path(source or data.source),
            Path(out or data.out),
            workers=workers or data.workers,
            on_error=on_error or data.on_error,
            settings=data,
        )
    except (IngestError, FileNotFoundError, ValueError) as err:
        _fail(err, "ingest")
    counts = ", ".join(f"{k}: {v}" for k, v in stats.get("num_samples", {}).items())
    typer.echo(f"prepared {counts}; skipped {len(stats.get('skipped', []))}")


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(Path("data/raw/demo"), "--out", help="where to write the folder-format source"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Write the procedurally generated demo dataset as a plain folder source (images, labels, instances)."""
    from pipeline.ingest.demo import write_demo_source

    p = _params(params)
    write_demo_source(out, p.data.demo)
    typer.echo(f"demo source written to {out}")


@app.command()
def train(
    params: Path = PARAMS_OPTION,
    resume: str = typer.Option(
        "auto", "--resume", help="auto: continue from the last matching checkpoint; never: start over"
    ),
) -> None:
    """Train the generator (launch with torchrun for several processes or machines)."""
    from pipeline.train import TrainError, run_train

    p = _params(params)
    try:
        metrics = run_train(p, Path("."), resume=resume)
    except (TrainError, FileNotFoundError, ValueError) as err:
        _fail(err, "train")
    typer.echo(f"trained {metrics['steps']} steps")


@app.command("train-segmenter")
def train_segmenter(params: Path = PARAMS_OPTION) -> None:
    """Train (or load) the segmentation network that scores mIoU."""
    from pipeline.evaluation.segmenter import run_train_segmenter

    p = _params(params)
    with _reported("train-segmenter"):
        path = run_train_segmenter(p, Path("."))
    typer.echo(f"segmenter written to {path}")


@app.command()
def evaluate(params: Path = PARAMS_OPTION) -> None:
    """Synthesize the validation split and score it: FID, KID, mIoU, pixel accuracy."""
    from pipeline.evaluation.stage import run_evaluate

    p = _params(params)
    with _reported("evaluate"):
        metrics = run_evaluate(p, Path("."))
    typer.echo(
        ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    )


@app.command()
def register(params: Path = PARAMS_OPTION) -> None:
    """Log the generator as an MLflow model, register it, and promote it if it beats the champion."""
    from mlflow.exceptions import MlflowException

    from pipeline.registry import run_register

    p = _params(params)
    with _reported("register", MlflowException):
        result = run_register(p, Path("."))
    verdict = "promoted to champion" if result.get("promoted") else "kept as challenger"
    typer.echo(f"{result['name']} version {result['version']}: {verdict}")


@app.command()
def synthesize(
    model: str = typer.Option(..., "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, or a generator .pt file"),
    label: Path = typer.Option(..., "--label", help="label map PNG (class indices)"),
    out: Path = typer.Option(..., "--out", help="output image PNG"),
    instance: Path | None = typer.Option(
        None, "--instance", help="instance map PNG, for models trained with instances"
    ),
    seed: int | None = typer.Option(None, "--seed", help="style seed (multimodal models)"),
) -> None:
    """Turn a label map into an image with a registered (or local) generator."""
    from pipeline.synthesize import synthesize as run

    with _reported("synthesize"):
        run(model, label, out, instance_path=instance, seed=seed)
    typer.echo(f"wrote {out}")


@app.command("model-info")
def model_info(
    setting: str | None = typer.Option(None, "--setting", help="coco-stuff|ade20k|cityscapes; default: all"),
    vae: bool = typer.Option(False, "--vae", help="with the style encoder"),
    params: Path | None = typer.Option(None, "--params", "-p", help="also count the model of this params file"),
) -> None:
    """Parameter counts of the generator, discriminator and encoder per setting."""
    from rich.console import Console
    from rich.table import Table

    from gaugan.config import parameter_counts, reference_setting

    names = [setting] if setting else ["coco-stuff", "ade20k", "cityscapes"]
    table = Table("setting", "G", "D", "E")
    for name in names:
        counts = parameter_counts(reference_setting(name, use_vae=vae))
        table.add_row(name + (" +vae" if vae else ""), *(f"{counts.get(k, 0):,}" for k in ("G", "D", "E")))
    if params is not None:
        from gaugan.data import load_class_table
        from pipeline.train import model_config

        p = _params(params)
        counts = parameter_counts(model_config(p, load_class_table(Path(p.data.out))))
        table.add_row(f"{params}", *(f"{counts.get(k, 0):,}" for k in ("G", "D", "E")))
    Console().print(table)


@flow_app.command("run")
def flow_run(repo: Path = typer.Option(Path("."), "--repo")) -> None:
    """Run the whole DVC pipeline as a Prefect flow (retries, logs, run history)."""
    from pipeline.flows import pipeline_flow

    with _reported("flow run"):
        pipeline_flow(repo=str(repo.resolve()))


@flow_app.command("retrain")
def flow_retrain(
    repo: Path = typer.Option(Path("."), "--repo"),
    force: bool = typer.Option(False, "--force", help="run even if the source data did not change"),
) -> None:
    """Rerun the pipeline if the source folder has new or changed files."""
    from pipeline.flows import retrain_flow

    with _reported("flow retrain"):
        retrain_flow(repo=str(repo.resolve()), force=force)


@app.command()
def schedule(
    cron: str = typer.Option("0 3 * * *", "--cron", help="cron expression for periodic retraining"),
    repo: Path = typer.Option(Path("."), "--repo"),
    port: int = typer.Option(
        4200, "--port", help="port of the local Prefect server started when PREFECT_API_URL is unset"
    ),
) -> None:
    """Serve the retraining flow on a schedule and on the new-data event (a local Prefect server unless PREFECT_API_URL is set)."""
    from pipeline.flows import serve_schedule

    with _reported("schedule"):
        serve_schedule(repo=str(repo.resolve()), cron=cron, port=port)


@app.command("notify-new-data")
def notify_new_data(repo: Path = typer.Option(Path("."), "--repo")) -> None:
    """Emit the 'new data' event that triggers the scheduled retraining deployment."""
    from pipeline.flows import notify_new_data as emit

    with _reported("notify-new-data"):
        emit(repo=str(repo.resolve()))


@app.command()
def demo(params: Path = PARAMS_OPTION) -> None:
    """Run the whole pipeline on the demo dataset with `dvc repro` and print where everything is."""
    from pipeline.demo import run_demo

    try:
        run_demo(params)
    except (RuntimeError, FileNotFoundError) as err:
        _fail(err, "demo")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
