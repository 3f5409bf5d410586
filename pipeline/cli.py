"""``gaugan-pipeline``: one command per stage, plus the demo, synthesis and scheduling.

The stage commands (run by ``dvc.yaml``) read ``params.yaml`` (``--params``) and call their stage's
entry point in ``pipeline/stages/``. A problem the user can fix (any :class:`gaugan.GauGANError`,
which every pipeline error derives from) is one red line naming the command, exit code 1; any
other exception is a bug and keeps its traceback, as every error does with ``--debug``. Heavy
libraries (torch, mlflow, prefect, torchmetrics) are imported inside the commands so ``--help``
is fast.
"""

from __future__ import annotations

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
prepared_app = typer.Typer(help="The prepared dataset: shards <-> one file per map.", no_args_is_help=True)
app.add_typer(prepared_app, name="prepared")

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", "-p", help="parameters file")
_debug = {"on": False}


@app.callback()
def main_options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="debug lines of the project too"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="warnings and errors only"),
    debug: bool = typer.Option(False, "--debug", help="show the traceback of every error"),
) -> None:
    from pipeline.logs import configure_logging

    _debug["on"] = debug
    configure_logging(-1 if quiet else 1 if verbose else 0)


@contextmanager
def _reported(command: str) -> Iterator[None]:
    """A user's mistake becomes one red line naming the command, exit code 1; a bug keeps its traceback."""
    from gaugan.errors import GauGANError

    try:
        yield
    except GauGANError as err:
        if _debug["on"]:
            raise
        typer.secho(f"error in {command}: {err}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None


def _params(path: Path, overrides: dict | None = None):
    from pipeline.params import load_params, override

    with _reported("params"):
        params = load_params(path)
        return override(params, overrides, "the command's options") if overrides else params


@app.command()
def ingest(
    params: Path = PARAMS_OPTION,
    format: str | None = typer.Option(
        None, "--format", help="demo|coco-stuff|ade20k|ade20k-full|cityscapes|spade|folder"
    ),
    source: Path | None = typer.Option(None, "--source", help="raw dataset folder (default: data.source)"),
    classes: str | None = typer.Option(
        None, "--classes", help="coco-stuff|ade20k|cityscapes (built in) or a class file (default: data.classes)"
    ),
    out: Path | None = typer.Option(None, "--out", help="prepared dataset folder (default: data.out)"),
    workers: int | None = typer.Option(None, "--workers", min=1, help="processes (default: data.workers)"),
    on_error: str | None = typer.Option(None, "--on-error", help="fail|skip (default: data.on_error)"),
) -> None:
    """Parse a raw dataset into the prepared format (labels, instances, edges, manifest)."""
    from pipeline.stages import ingest as stage

    overrides = {
        "data.format": format,
        "data.source": source and str(source),
        "data.classes": classes,
        "data.out": out and str(out),
        "data.workers": workers,
        "data.on_error": on_error,
    }
    p = _params(params, overrides)
    with _reported("ingest"):
        stats = stage.run(p)
    counts = ", ".join(f"{k}: {v}" for k, v in stats.get("num_samples", {}).items())
    typer.echo(f"prepared {counts}; skipped {len(stats.get('skipped', []))}")


@prepared_app.command("export")
def prepared_export(
    out: Path = typer.Option(..., "--out", help="folder to write (one file per map)"),
    data: Path | None = typer.Option(None, "--data", help="the prepared dataset (default: data.out)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Write a prepared dataset as images/, labels/, instances/, edges/ files (the bytes unchanged)."""
    from pipeline.datasets.prepared_files import export_files

    _convert("prepared export", export_files, data or Path(_params(params).data.out), out, "written as files to")


@prepared_app.command("import")
def prepared_import(
    files: Path = typer.Option(..., "--files", help="a prepared dataset of the file layout"),
    out: Path | None = typer.Option(None, "--out", help="the sharded dataset to write (default: data.out)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Pack a prepared dataset of the file layout into shards (data.shard_size_mb), as ingest writes them."""
    from functools import partial

    from pipeline.datasets.prepared_files import import_files

    settings = _params(params).data
    pack = partial(import_files, shard_size_mb=settings.shard_size_mb)
    _convert("prepared import", pack, files, out or Path(settings.out), "packed into shards in")


def _convert(command: str, convert, src: Path, dst: Path, done: str) -> None:
    with _reported(command):
        n = convert(src, dst)
    typer.echo(f"{n} samples of {src} {done} {dst}")


@app.command("demo-data")
def demo_data(
    out: Path = typer.Option(Path("data/raw/demo"), "--out", help="where to write the folder-format source"),
    params: Path = PARAMS_OPTION,
    drop: int = typer.Option(0, "--drop", help="add this many new training samples to the existing source at --out"),
    new_class: str | None = typer.Option(None, "--new-class", help="with --drop: some show this new class (fence)"),
    drop_seed: int = typer.Option(1, "--drop-seed", help="with --drop: which drop (another seed, other samples)"),
) -> None:
    """Write the procedurally generated demo dataset as a plain folder source (images, labels, instances);
    with --drop, add a data drop to it instead (new training samples, optionally of a new class), and
    version it with `dvc add` when the source is tracked by DVC (as a team's upload would)."""
    from pipeline.datasets.demo import add_demo_drop, write_demo_source
    from pipeline.versioning.data_versions import dvc_file, is_tracked, track

    settings = _params(params).data.demo
    if drop > 0:
        with _reported("demo-data"):
            names = add_demo_drop(out, settings, drop, new_class, drop_seed)
            versioned = is_tracked(out) and track(out)
        typer.echo(f"{len(names)} training samples added to {out}" + (f" (class {new_class!r})" if new_class else ""))
        if versioned:
            typer.echo(f"new version of {out} recorded in {dvc_file(out)} (dvc add); commit it with git")
        return
    write_demo_source(out, settings)
    typer.echo(f"demo source written to {out}")


@app.command()
def train(
    params: Path = PARAMS_OPTION,
    resume: str = typer.Option("auto", "--resume", help="auto: continue from a matching checkpoint; never: start over"),
) -> None:
    """Train the generator (launch with torchrun for several processes or machines)."""
    from pipeline.stages import train as stage

    p = _params(params)
    with _reported("train"):
        metrics = stage.run(p, resume=resume)
    typer.echo(f"trained {metrics['steps']} steps")


@app.command("resolve-parent")
def resolve_parent(params: Path = PARAMS_OPTION) -> None:
    """Resolve train.init_from (an alias to a version) into train.parent_dir, which the train stage reads."""
    from pipeline.stages import resolve_parent as stage

    p = _params(params)
    with _reported("resolve-parent"):
        record = stage.run(p)
    where = record.get("uri") or "none: training starts from scratch"
    typer.echo(f"parent: {where}" + (f" (version {record['version']})" if record.get("version") else ""))


@app.command("train-segmenter")
def train_segmenter(params: Path = PARAMS_OPTION) -> None:
    """Train (or load) the segmentation network that scores mIoU."""
    from pipeline.stages import train_segmenter as stage

    p = _params(params)
    with _reported("train-segmenter"):
        path = stage.run(p)
    typer.echo(f"segmenter written to {path}")


@app.command()
def evaluate(
    params: Path = PARAMS_OPTION,
    model: Path | None = typer.Option(
        None, "--model", help="a generator file to score instead of train.model_out (e.g. an imported one)"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", help="where to write the report (default: evaluate.out_dir)"
    ),
) -> None:
    """Synthesize the validation split and score it: FID, KID, mIoU, pixel accuracy."""
    from pipeline.stages import evaluate as stage

    p = _params(params, {"train.model_out": model and str(model), "evaluate.out_dir": out_dir and str(out_dir)})
    with _reported("evaluate"):
        metrics = stage.run(p)
    numbers = (f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    typer.echo(", ".join(numbers))


@app.command()
def register(params: Path = PARAMS_OPTION) -> None:
    """Log the generator as an MLflow model, register it, and promote it if it beats the champion."""
    from pipeline.stages import register as stage

    p = _params(params)
    with _reported("register"):
        result = stage.run(p)
    verdict = "promoted to champion" if result.get("promoted") else "kept as challenger"
    typer.echo(f"{result['name']} version {result['version']}: {verdict}")


@app.command()
def synthesize(
    model: str = typer.Option(..., "--model", help="models:/NAME@ALIAS, models:/NAME/VERSION, or a generator .pt file"),
    label: Path = typer.Option(
        ..., "--label", help="label map PNG (class indices, or the model's class colours), or a folder of them"
    ),
    out: Path = typer.Option(..., "--out", help="output image PNG (a folder for a folder of label maps)"),
    instance: Path | None = typer.Option(
        None, "--instance", help="instance map PNG (a folder: same names), for models trained with instances"
    ),
    seed: int | None = typer.Option(None, "--seed", help="style seed (multimodal models); sample k uses seed + k"),
    style_image: Path | None = typer.Option(
        None, "--style-image", help="a photo whose style to copy (models with a style encoder)"
    ),
    n_samples: int = typer.Option(1, "--n-samples", min=1, help="images per label map: OUT-0.png, OUT-1.png, ..."),
) -> None:
    """Turn label maps into images with a registered (or local) generator."""
    from pipeline.serving.synthesize import synthesize_many

    with _reported("synthesize"):
        written = synthesize_many(
            model, label, out, instance_path=instance, seed=seed, style_path=style_image, n_samples=n_samples
        )
    typer.echo(f"wrote {written[0]}" if len(written) == 1 else f"wrote {len(written)} images to {written[0].parent}")


@app.command("app")
def paint_app(
    model: str | None = typer.Option(
        None, "--model", help="models:/NAME@ALIAS or a generator file preselected (default: app.model, else a champion)"
    ),
    host: str | None = typer.Option(None, "--host", help="interface to listen on (default: app.host, 127.0.0.1)"),
    port: int | None = typer.Option(None, "--port", help="TCP port (default: app.port, 7860)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Serve the painting page and its HTTP API (/docs): paint class regions, get the image."""
    from pipeline.serving.app.server import serve
    from pipeline.tracking import resolve_tracking_uri

    p = _params(params, {"app.model": model, "app.host": host, "app.port": port})
    typer.echo(f"painting app on http://{p.app.host}:{p.app.port} (API: /docs); Ctrl-C stops it")
    with _reported("app"):
        serve(p.app, p.app.model, resolve_tracking_uri(p.mlflow.tracking_uri), Path(p.data.out))


@app.command("import-reference")
def import_reference(
    setting: str = typer.Option(
        ..., "--setting", help="coco-stuff|ade20k|cityscapes: what the checkpoint was trained on"
    ),
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", help="the reference's checkpoint folder (latest_net_G.pth, opt.txt) or a *_net_G.pth"
    ),
    out: Path = typer.Option(..., "--out", help="the generator file to write, e.g. models/coco-reference.pt"),
    encoder: Path | None = typer.Option(
        None, "--encoder", help="latest_net_E.pth of a multimodal model (default: the folder's, when present)"
    ),
    register: str | None = typer.Option(
        None, "--register", help="also log it to MLflow and register it as a new version of this model"
    ),
    champion: bool = typer.Option(False, "--champion", help="with --register: give the new version the champion alias"),
) -> None:
    """Turn an official NVlabs/SPADE checkpoint into a generator file that synthesize, evaluate and serving take."""
    from pipeline.parents.reference_import import import_reference as run

    with _reported("import-reference"):
        summary = run(setting, checkpoint, out, encoder=encoder, register=register, champion=champion)
    cfg = summary["config"]
    typer.echo(
        f"imported the {setting} generator (ngf {cfg['ngf']}, {summary['semantic_nc']} label channels"
        f"{', instance edges' if cfg['use_instance'] else ''}{', style encoder' if summary['encoder'] else ''}) "
        f"into {out}"
    )
    if "registration" in summary:
        reg = summary["registration"]
        typer.echo(f"registered {reg['name']} version {reg['version']} (aliases: {', '.join(reg['aliases'])})")


@app.command()
def compare(
    a: str = typer.Argument(
        ..., help="model A: an MLflow run id, runs:/ID, models:/NAME/VERSION or models:/NAME@ALIAS"
    ),
    b: str = typer.Argument(..., help="model B, named the same ways"),
    out: Path = typer.Option(Path("outputs/compare"), "--out", help="the report goes to OUT/<A>-vs-<B>/report.html"),
    maps: int = typer.Option(4, "--maps", min=1, help="validation label maps rendered by both models"),
    seed: int = typer.Option(0, "--seed", help="style seed of the rendered maps (multimodal models)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda, for rendering the maps"),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="do not log the report to MLflow"),
    params: Path = PARAMS_OPTION,
) -> None:
    """An HTML report of two models side by side: metrics and whether they compare, per-class IoU, samples, losses."""
    from pipeline.reports.compare import build_report
    from pipeline.tracking import resolve_tracking_uri

    p = _params(params)
    data_root = Path(p.data.out)
    with _reported("compare"):
        html = build_report(
            a,
            b,
            resolve_tracking_uri(p.mlflow.tracking_uri),
            out,
            data_root=data_root if data_root.is_dir() else None,
            maps=maps,
            seed=seed,
            device=device,
            log_to_mlflow=not no_mlflow,
        )
    typer.echo(f"wrote {html}")


@app.command("model-info")
def model_info(
    setting: str | None = typer.Option(None, "--setting", help="coco-stuff|ade20k|cityscapes; default: all"),
    vae: bool = typer.Option(False, "--vae", help="with the style encoder"),
    netG: str = typer.Option(
        "spade", "--netG", help="spade|pix2pixhd: the generator family (pix2pixhd: spectralinstance)"
    ),
    params: Path | None = typer.Option(None, "--params", "-p", help="also count the model of this params file"),
) -> None:
    """Parameter counts of the generator, discriminator and encoder per setting."""
    from rich.console import Console
    from rich.table import Table

    from gaugan.config import GauGANConfig, reference_setting
    from gaugan.networks import parameter_counts

    names = [setting] if setting else ["coco-stuff", "ade20k", "cityscapes"]
    family: dict[str, str] = {"netG": netG, "norm_G": "spectralinstance"} if netG == "pix2pixhd" else {"netG": netG}
    table = Table("setting", "netG", "G", "D", "E")
    with _reported("model-info"):
        configs = [
            (
                name + (" +vae" if vae else ""),
                GauGANConfig(**{**reference_setting(name, use_vae=vae).to_dict(), **family}),
            )
            for name in names
        ]
        if params is not None:
            from gaugan.classes import ClassTable
            from pipeline.training.settings import model_config

            p = _params(params)
            configs.append((str(params), model_config(p, ClassTable.load(Path(p.data.out)))))
    for label, config in configs:
        counts = parameter_counts(config)
        table.add_row(label, config.netG, *(f"{counts.get(k, 0):,}" for k in ("G", "D", "E")))
    Console().print(table)


@flow_app.command("run")
def flow_run(
    repo: Path = typer.Option(Path("."), "--repo"),
    push: bool = typer.Option(True, "--push/--no-push", help="dvc push at the end when a default remote is set"),
) -> None:
    """Run the whole DVC pipeline as a Prefect flow (retries, logs, run history), then push to the DVC remote."""
    from pipeline.orchestration.flows import lean_temporary_server, pipeline_flow

    lean_temporary_server()
    with _reported("flow run"):
        pipeline_flow(repo=str(repo.resolve()), push=push)


@flow_app.command("retrain")
def flow_retrain(
    repo: Path = typer.Option(Path("."), "--repo"),
    force: bool = typer.Option(False, "--force", help="run even if the source data did not change"),
) -> None:
    """Retrain when DVC says the source data changed; commit and tag what made the model (retrain in params.yaml)."""
    from pipeline.orchestration.flows import lean_temporary_server, retrain_flow

    lean_temporary_server()
    with _reported("flow retrain"):
        retrain_flow(repo=str(repo.resolve()), force=force)


@flow_app.command("alerts")
def flow_alerts(
    params: Path = PARAMS_OPTION,
    url: str | None = typer.Option(None, "--url", help="the webhook URL (default: prefect.failure_webhook)"),
) -> None:
    """On the Prefect server of PREFECT_API_URL: POST to a webhook when a deployment run of the pipeline fails."""
    from pipeline.orchestration.flows import set_failure_alert

    target = url or _params(params).prefect.failure_webhook
    with _reported("flow alerts"):
        automation = set_failure_alert(target)
    if automation is None:
        typer.echo("no failure webhook (prefect.failure_webhook is null): the alert is off")
    else:
        typer.echo(f"failed deployment runs now POST to the webhook (automation {automation})")


@app.command()
def schedule(
    cron: str = typer.Option("0 3 * * *", "--cron", help="cron expression for periodic retraining"),
    repo: Path = typer.Option(Path("."), "--repo"),
    port: int = typer.Option(
        4200, "--port", help="port of the local Prefect server started when PREFECT_API_URL is unset"
    ),
) -> None:
    """Serve the retraining flow on a schedule and on the new-data event (a local Prefect server unless
    PREFECT_API_URL is set)."""
    from pipeline.orchestration.flows import serve_schedule

    with _reported("schedule"):
        serve_schedule(repo=str(repo.resolve()), cron=cron, port=port)


@app.command("notify-new-data")
def notify_new_data(repo: Path = typer.Option(Path("."), "--repo")) -> None:
    """Emit the 'new data' event that triggers the scheduled retraining deployment."""
    from pipeline.orchestration.flows import notify_new_data as emit

    with _reported("notify-new-data"):
        emit(repo=str(repo.resolve()))


@app.command()
def reproduce(
    model: str = typer.Argument(..., help="the registered version: models:/NAME/VERSION (or models:/NAME@ALIAS)"),
    repo: Path = typer.Option(Path("."), "--repo", help="the project (its git history and DVC cache or remote)"),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="an empty folder for the clone (default: a temporary one)"
    ),
    force: bool = typer.Option(
        False, "--force", help="retrain the generator and compare its weights with the registered one"
    ),
) -> None:
    """Make a registered version again from its git ref: clone, dvc pull, dvc repro (up to date?), --force retrains."""
    import json

    from pipeline.orchestration.reproduce import reproduce as run

    with _reported("reproduce"):
        report = run(model, repo, workdir, force)
    typer.echo(json.dumps(report, indent=2))
    if force and not report.get("identical"):
        raise typer.Exit(code=2)


@app.command()
def demo(params: Path = PARAMS_OPTION) -> None:
    """Run the whole pipeline on the demo dataset with `dvc repro` and print where everything is."""
    from pipeline.orchestration.demo import run_demo

    with _reported("demo"):
        run_demo(params)


def main() -> None:
    app()


if __name__ == "__main__":
    main()  # typer's app() ends with sys.exit itself
