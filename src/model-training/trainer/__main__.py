"""`python -m trainer`: train, evaluate, optimize and register the image classifier."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from common import storage
from common.cli import (
    EXIT_FAILURE,
    EXIT_USAGE,
    App,
    check_output,
    failures_as,
    from_setting,
    read_params,
    version_option,
)
from common.contracts import KERAS_FILE, LABELS, LINEAGE, SAVED_MODEL_DIR, TFLITE_FILE
from common.settings import get_settings
from trainer.inputs import (
    RERUN_TRAIN,
    InputError,
    check_candidate,
    check_processed,
    read_preprocess,
)
from trainer.quiet import quiet_tensorflow_import

if TYPE_CHECKING:  # trainer.train imports TensorFlow: only once a command needs it
    from common.contracts import RegisterResult
    from common.params import PipelineParams
    from common.registry import ModelRegistry
    from trainer.train import TrainSummary

app = App(group="trainer", help=__doc__, no_args_is_help=True)


@app.callback()
def _options(version: Annotated[bool, version_option("mega-model-training")] = False) -> None:
    """Train, evaluate and register the image classifier."""


# What evaluate loads from the candidate besides the sidecars.
CANDIDATE_MODEL_FILES = (KERAS_FILE, TFLITE_FILE)
# What optimize converts: the SavedModel (quantization) and the float32 `.tflite` as is.
OPTIMIZE_MODEL_FILES = (KERAS_FILE, TFLITE_FILE, SAVED_MODEL_DIR, LABELS)

# A path or gs:// URI (a Vertex AI job reads the params.yaml staged beside its data).
ParamsOption = Annotated[str, typer.Option(help="Pipeline parameters file or gs:// URI.")]


class StrategyName(StrEnum):
    auto = "auto"
    default = "default"
    mirrored = "mirrored"
    multiworker = "multiworker"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    data: Annotated[str, typer.Option(help="Processed data folder or gs:// URI.")],
    out: Annotated[
        str,
        typer.Option(
            envvar="AIP_MODEL_DIR",  # set by Vertex AI to the job's model folder
            show_envvar=True,
            help="Folder or gs:// URI to export the candidate model to.",
        ),
    ],
    params: ParamsOption = "params.yaml",
    strategy: Annotated[
        StrategyName,
        typer.Option(
            help="auto: several workers when TF_CONFIG or CLUSTER_SPEC is set, else all GPUs "
            "when there are several, else one device."
        ),
    ] = StrategyName.auto,
    run_dir: Annotated[
        str | None,
        typer.Option(
            show_default=from_setting("train_run_dir")
            + ", else AIP_CHECKPOINT_DIR, else .mega/runs/<key of out, params and data>",
            help="Folder or gs:// URI for the resumable backup.",
        ),
    ] = None,
) -> None:
    """Train on DATA's train split (val for monitoring) and export the candidate to OUT.

    A run killed part-way resumes from its last finished epoch when started again
    with the same arguments. Only the chief worker exports and tracks the run.

    Extra arguments such as --train.learning_rate=0.003 override params.yaml,
    as Vertex AI's tuning trials pass theirs; in a tuning trial the chief
    then reports tune.metric through cloudml-hypertune.
    """
    pipeline = overridden(read_params(params), ctx.args)
    with failures_as(EXIT_USAGE, InputError):  # checked before any work
        check_processed(data, ("train",))
    check_output("--out", out, replaced=True)
    from trainer.tracking import check_server

    check_server(pipeline.train.tracking == "wandb", get_settings())  # ServiceError: one line
    quiet_tensorflow_import()
    from trainer.budget import TooLargeError
    from trainer.distribute import StrategyError
    from trainer.model import WeightsUnavailableError
    from trainer.train import train as run_training

    with (
        failures_as(
            EXIT_FAILURE,
            FileNotFoundError,
            ValueError,
            StrategyError,
            TooLargeError,
            WeightsUnavailableError,
        ),
        reading(data),
    ):
        summary = run_training(
            data,
            out,
            pipeline,
            get_settings(),
            strategy=strategy.value,
            # From settings, so that MEGA_TRAIN_RUN_DIR in .env counts, like every setting.
            run_dir=run_dir or get_settings().train_run_dir,
        )
    for line in train_report(summary, out):
        typer.echo(line)
    if summary.is_chief:
        from trainer.tuning import report_metric

        with failures_as(EXIT_FAILURE, ValueError):  # a fit without the metric
            reported = report_metric(pipeline.tune, summary.final, summary.epochs)
        if reported is not None:
            typer.echo(f"train: reported {pipeline.tune.metric} {reported:.4f} for tuning")


def overridden(pipeline: PipelineParams, args: list[str]) -> PipelineParams:
    """`pipeline` with the `--<key>=<value>` overrides in `args` applied; a bad one is a
    usage error (2) naming it."""
    from common.params import ParamsError, apply_overrides
    from trainer.tuning import OverrideError, parse_overrides

    with failures_as(EXIT_USAGE, OverrideError, ParamsError):
        return apply_overrides(pipeline, parse_overrides(args))


def train_report(summary: TrainSummary, out: str) -> list[str]:
    """The lines `trainer train` prints for `summary`: backups removed, then the result."""
    lines = []
    if summary.removed_backups:
        removed = summary.removed_backups
        lines.append(
            f"train: removed {len(removed)} old backup(s) of runs with other parameters "
            f"({sum(size for _, size in removed) / 1e6:.1f} MB): "
            + ", ".join(folder for folder, _ in removed)
        )
    setup = f"strategy {summary.strategy}, {summary.replicas} replica(s)" + (
        f" on {summary.workers} workers" if summary.workers > 1 else ""
    )
    resumed = f", resumed after epoch {summary.resumed_from}" if summary.resumed_from else ""
    if not summary.is_chief:
        lines.append(
            f"train: {summary.task} finished {summary.epochs} epochs ({setup}{resumed}); "
            "only the chief exports, this worker's copy was discarded"
        )
        return lines
    lines.append(
        f"train: {summary.epochs} epochs in {summary.seconds:.1f}s{resumed}, "
        f"val accuracy {summary.final.get('val_accuracy', float('nan')):.4f} "
        f"({setup}, global batch {summary.global_batch_size}); candidate in {out}"
        + (
            f"; W&B run {summary.wandb_run_id} in {summary.wandb_dir}"
            if summary.wandb_run_id
            else ""
        )
    )
    return lines


@contextlib.contextmanager
def reading(data: str) -> Iterator[None]:
    """Within: a bad input found while reading it (an `InputError`, a damaged shard of
    the processed folder `data`) ends the command with exit 2 and its one line.
    Needs TensorFlow imported (`quiet_tensorflow_import`) first."""
    from trainer.data import damaged_shards_as_input_errors

    with failures_as(EXIT_USAGE, InputError), damaged_shards_as_input_errors(data):
        yield


@contextlib.contextmanager
def named_as(folders: dict[str, str]) -> Iterator[None]:
    """Within: an `InputError` names the user's URIs, not the temporary folders
    (`folders`: local folder → URI) they were downloaded to, which the user never saw."""
    try:
        yield
    except InputError as exc:
        message = str(exc)
        for local, uri in folders.items():
            message = message.replace(local, uri.rstrip("/"))
        if message == str(exc):
            raise
        raise InputError(message) from exc


def local_folder(uri: str, tmp: str, check: Callable[[str], object] | None = None) -> Path:
    """URI as a local folder: a gs:// folder is downloaded into `tmp` and then checked
    with `check(tmp)` (its `InputError` names URI); a local one is used in place."""
    if not storage.is_gcs(uri):
        return Path(uri)
    storage.download_tree(uri, tmp)
    if check is not None:
        with named_as({tmp: uri}):
            check(tmp)
    return Path(tmp)


def local_candidate(model: str, tmp: str, files: tuple[str, ...]) -> Path:
    """MODEL as a local folder: a gs:// candidate is downloaded into `tmp` and then checked
    for `files` (InputError when one is missing); a local one is used in place."""
    return local_folder(model, tmp, lambda folder: check_candidate(folder, files))


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Candidate model folder.")],
    data: Annotated[str, typer.Option(help="Processed data folder or gs:// URI.")],
    metrics: Annotated[str, typer.Option(help="Where to write metrics.json.")],
    details: Annotated[str, typer.Option(help="Where to write per-class details.")],
    plots: Annotated[
        str | None,
        typer.Option(
            show_default="plots/ beside METRICS",
            help="Folder for the confusion-matrix and misclassified PNGs and the training curves.",
        ),
    ] = None,
    accuracy_file: Annotated[
        str | None,
        typer.Option(
            show_default="none",
            help="Also write the test accuracy here, as a bare number (the kfp pipeline's gate "
            "reads it as an output parameter).",
        ),
    ] = None,
    macro_f1_file: Annotated[
        str | None,
        typer.Option(
            show_default="none", help="Also write the test macro F1 here, as a bare number."
        ),
    ] = None,
) -> None:
    """Evaluate MODEL on DATA's test split; writes METRICS (DVC metrics), DETAILS and PLOTS."""
    with failures_as(EXIT_USAGE, InputError):  # checked before any work
        if not storage.is_gcs(model):  # a gs:// candidate is checked once downloaded
            check_candidate(model, CANDIDATE_MODEL_FILES)
        check_processed(data, ("test",))
    check_output("--metrics", metrics, file=True)
    check_output("--details", details, file=True)
    if plots:
        check_output("--plots", plots)
    gate_files = {"--accuracy-file": accuracy_file, "--macro-f1-file": macro_f1_file}
    for flag, path in gate_files.items():
        if path:
            check_output(flag, path, file=True)
    quiet_tensorflow_import()
    from trainer.evaluate import evaluate as run_evaluation

    with (
        failures_as(EXIT_FAILURE, FileNotFoundError, ValueError),
        reading(data),
        tempfile.TemporaryDirectory(prefix="evaluate-") as tmp,
    ):
        local = local_candidate(model, tmp, CANDIDATE_MODEL_FILES)
        spec = read_preprocess(str(local), RERUN_TRAIN)
        plots_dir = plots or storage.join(
            metrics.rsplit("/", 1)[0] if "/" in metrics else ".", "plots"
        )
        result = run_evaluation(local, data, spec, plots=plots_dir)
    result.metrics.write(metrics)
    result.details.write(details)
    test = result.metrics.test
    # After metrics.json: the gate never reads a number that file does not hold.
    for path, value in ((accuracy_file, test.accuracy), (macro_f1_file, test.macro_f1)):
        if path:
            storage.write_text(path, repr(value))
    typer.echo(
        f"evaluate: test accuracy {test.accuracy:.4f} (tflite {test.tflite_accuracy:.4f}), "
        f"macro F1 {test.macro_f1:.4f} on {test.examples} examples; metrics in {metrics}, "
        f"plots in {plots_dir}"
    )


@app.command()
def optimize(
    model: Annotated[str, typer.Option(help="Candidate model folder.")],
    data: Annotated[str, typer.Option(help="Processed data folder or gs:// URI.")],
    out: Annotated[str, typer.Option(help="Where to write each variant's .tflite.")],
    report: Annotated[
        str, typer.Option(help="Where to write optimization.json (DVC metrics; .md beside it).")
    ],
    params: ParamsOption = "params.yaml",
) -> None:
    """Quantize (and prune and distill) MODEL into LiteRT variants, measured on DATA's test split.

    Each variant is measured in LiteRT; those params.yaml `optimize` allows are marked
    for register to serve.
    """
    pipeline = read_params(params)
    with failures_as(EXIT_USAGE, InputError):  # checked before any work
        if not storage.is_gcs(model):  # a gs:// candidate is checked once downloaded
            check_candidate(model, OPTIMIZE_MODEL_FILES)
        check_processed(data, ("train", "test"))
    check_output("--out", out, replaced=True)
    check_output("--report", report, file=True)
    from trainer.tracking import check_server

    check_server(pipeline.train.tracking == "wandb", get_settings())  # ServiceError: one line
    quiet_tensorflow_import()
    from trainer.optimize_stage import run_optimize

    with (
        failures_as(EXIT_FAILURE, FileNotFoundError, ValueError),
        reading(data),
        tempfile.TemporaryDirectory(prefix="optimize-") as tmp,
    ):
        local = local_candidate(model, tmp, OPTIMIZE_MODEL_FILES)
        result = run_optimize(local, data, out, report, pipeline)
    eligible = [row.name for row in result.variants if row.eligible]
    typer.echo(
        f"optimize: {len(result.variants)} variants measured in LiteRT; eligible to serve: "
        f"{', '.join(eligible) or 'none (register serves float32)'}; variants in {out}, "
        f"table in {report}"
    )


@app.command()
def register(
    model: Annotated[str, typer.Option(help="Candidate model folder or gs:// URI.")],
    metrics: Annotated[str, typer.Option(help="metrics.json from evaluate (path or gs:// URI).")],
    registry: Annotated[
        str | None,
        typer.Option(
            show_default=from_setting("models_root"), help="Registry root folder or gs:// URI."
        ),
    ] = None,
    optimized: Annotated[
        str | None,
        typer.Option(
            show_default="none: serve the candidate's float32 model",
            help="The optimize stage's folder or gs:// URI: time its variants here and serve "
            "the fastest eligible one.",
        ),
    ] = None,
    params: ParamsOption = "params.yaml",
    vertex_serving_image: Annotated[
        str | None,
        typer.Option(
            show_default="none: the folder registry only",
            help="Also upload the version to the Vertex AI Model Registry (MEGA_GCP_PROJECT, "
            "MEGA_GCP_REGION if not us-central1; a gs:// --registry), served by this API "
            "service image (REPO/api-service:TAG); its production/candidate aliases follow "
            "aliases.json.",
        ),
    ] = None,
) -> None:
    """Publish MODEL to the registry; alias it production if it passes the gate."""
    pipeline = read_params(params)
    record_root = registry or get_settings().models_root
    with failures_as(EXIT_USAGE, InputError):  # checked before any work
        if not storage.is_gcs(model):  # a gs:// candidate is checked once downloaded
            check_candidate(model, (LINEAGE,))
    check_output("--registry", record_root)
    if vertex_serving_image is not None:
        from trainer.vertex_registry import VertexSetupError, check_setup

        with failures_as(EXIT_USAGE, VertexSetupError):
            check_setup(
                get_settings(), record_root, pipeline.registry.model_name, vertex_serving_image
            )
    from common.registry import ModelRegistry, RegistryError
    from trainer.register import register as run_register
    from trainer.tracking import check_server

    # The model artifact (and the timed table) go to W&B: the server answers before any work.
    tracking = pipeline.train.tracking == "wandb"
    check_server(tracking, get_settings())  # ServiceError: one line

    with (
        failures_as(EXIT_FAILURE, FileNotFoundError, KeyError, ValueError, RegistryError),
        failures_as(EXIT_USAGE, InputError),  # a bad metrics file or input folder
        tempfile.TemporaryDirectory(prefix="register-") as tmp,
    ):
        local_model = local_candidate(model, f"{tmp}/model", (LINEAGE,))
        local_optimized = local_folder(optimized, f"{tmp}/optimized") if optimized else None
        downloaded = {f"{tmp}/model": model}
        if optimized:
            downloaded[f"{tmp}/optimized"] = optimized
        with named_as(downloaded):
            record = run_register(
                local_model,
                metrics,
                record_root,
                pipeline.registry,
                local_optimized,
                pipeline.optimize,
            )
    verdict = "promoted to production" if record.promoted else "kept as candidate"
    if record.promoted and record.was_production:
        verdict = "stays production"
    published = ModelRegistry(record_root, pipeline.registry.model_name)
    variant = published.version_info(record.version).get("variant")
    served = f" ({variant} variant)" if variant else ""
    typer.echo(
        f"register: {record.model} version {record.version}{served} {verdict} "
        f"({record.reason}); in {record.uri}"
    )
    report_to_wandb(published, record, tracking)
    if vertex_serving_image is not None:
        register_on_vertex(published, record, vertex_serving_image)


def report_to_wandb(published: ModelRegistry, record: RegisterResult, tracking: bool) -> None:
    """The version as the W&B model artifact; a failure is a warning: it is published."""
    from common.contracts import ContractError
    from common.registry import RegistryError
    from common.services import ServiceError
    from trainer.register import track_register

    try:
        track_register(published, record, tracking, get_settings())
    except (ServiceError, OSError, RegistryError, ContractError) as exc:
        typer.echo(
            f"register: warning: the model artifact did not reach W&B ({exc}); the "
            "version is published",
            err=True,
        )


def register_on_vertex(published: ModelRegistry, record: RegisterResult, image: str) -> None:
    """Upload the version to the Vertex AI Model Registry and say what it holds.

    A failure is the command's (one line, exit 69): the pipeline asked for the cloud
    registry; the folder registry's version stays published and a re-run completes it.
    """
    from common.services import ServiceError
    from trainer.vertex_registry import publish_to_vertex

    try:
        vertex = publish_to_vertex(published, record, image, get_settings())
    except ServiceError as exc:
        raise ServiceError(
            exc.service,
            exc.problem,
            f"{exc.fix}; the folder registry's version {record.version} is published, "
            "re-run register to upload it",
            denied=exc.denied,
        ) from exc
    done = "uploaded as" if vertex.uploaded else "already is"
    aliases = ", ".join(vertex.aliases) or "no production/candidate alias"
    typer.echo(
        f"register: Vertex AI: version {record.version} {done} {vertex.name} version "
        f"{vertex.version_id} ({aliases})"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
