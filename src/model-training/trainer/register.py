"""The evaluation gate: publish the candidate and decide which alias it earns."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from common import storage
from common.contracts import (
    LABELS,
    LINEAGE,
    METRICS,
    MODEL_CARD,
    OPTIMIZATION,
    RUN_RECORD,
    STATS,
    TFLITE_FILE,
    TRAINING_CLASSES,
    ContractError,
    Lineage,
    Metrics,
    Optimization,
    RegisterResult,
    SplitMetrics,
    Stats,
    TrainingClasses,
    read_labels,
)
from common.params import OptimizeParams, RegistryParams
from common.registry import ModelRegistry
from common.settings import Settings
from trainer.inputs import check_metrics, check_optimized
from trainer.lineage import version_identity, version_lineage
from trainer.optimize_report import OPTIMIZATION_PNG, markdown_table, plot_png, table
from trainer.selection import select, time_variants
from trainer.tracking import Tracker

log = logging.getLogger("trainer.register")

PRODUCTION = "production"
CANDIDATE = "candidate"


def model_card(
    name: str, metrics: Metrics, lineage: Lineage, optimization: Optimization | None = None
) -> str:
    """The version's `model_card.md`; with `optimization`, the variant served and the table."""
    test = dict(sorted(metrics.test.model_dump(exclude_unset=True).items()))
    train_params = lineage.params.get("train", {})
    return "\n".join(
        [
            f"# Model card: {name}",
            "",
            f"- Model: `{train_params.get('model', '?')}`, trained {lineage.trained_at or '?'}",
            f"- Data: `{lineage.data or '?'}`, version `{(lineage.data_hash or '?')[:12]}`",
            f"- Code: git `{lineage.git_sha or '?'}`"
            + (" (uncommitted changes)" if lineage.git_dirty else ""),
            f"- W&B run: `{lineage.wandb_run_id or 'not tracked'}`",
            "",
            "## Test metrics",
            "",
            "| metric | value |",
            "|---|---|",
            *(
                f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                for k, v in test.items()
            ),
            "",
            *(optimization_section(optimization) if optimization else []),
            "## Intended use",
            "",
            "Demonstration classifier of the Mega Pipeline template; "
            "inputs must resemble the training data (see preprocess.json).",
            "",
        ]
    )


def optimization_section(report: Optimization) -> list[str]:
    """The model card's lines on the served variant and every variant measured in LiteRT."""
    return [
        "## Optimization",
        "",
        f"Serves the `{report.selected}` variant: {report.reason}. Timed when this version "
        "was registered, on the machine that registered it.",
        "",
        *markdown_table(report),
        "",
    ]


def production_accuracy(registry: ModelRegistry) -> tuple[str, float] | None:
    """The production version and its test accuracy, or None when there is none."""
    version = registry.aliases().get(PRODUCTION)
    if version is None or version not in registry.versions():
        return None
    info = registry.version_info(version)
    if "test_accuracy" in info:
        return version, float(info["test_accuracy"])
    metrics = registry.read_document(version, METRICS, Metrics)
    if metrics is None:
        raise FileNotFoundError(
            f"{storage.join(registry.version_uri(version), METRICS)}: the production "
            "version has no metrics to compare with; restore the file from a copy"
        )
    return version, metrics.test.accuracy


def _thresholds(accuracy: float, macro_f1: float, params: RegistryParams) -> list[tuple[str, bool]]:
    """The verdict on each absolute threshold, for the reason, and whether it is met."""
    checks = [
        ("test accuracy", accuracy, params.min_accuracy),
        ("macro F1", macro_f1, params.min_macro_f1),
    ]
    return [
        (
            f"{name} {value:.4f} {'≥' if value >= floor else '<'} threshold {floor:.4f}",
            value >= floor,
        )
        for name, value, floor in checks
    ]


def gate(
    current: tuple[str, float] | None,
    version: str,
    test: SplitMetrics,
    params: RegistryParams,
    labels: list[str],
) -> tuple[str, str]:
    """The alias `version` earns, and why, against `current`: the production version and
    its test accuracy before `version` was published (`production_accuracy`), or None.

    `test` is metrics.json's `test` section (`accuracy` and `macro_f1` in 0..1).
    Production needs a model of at least two classes, both absolute thresholds
    (accuracy, and macro F1 so that a neglected class fails even on imbalanced
    data) and, when a production model exists, a test accuracy at least
    `min_improvement` above it (and strictly above). The production version registered
    again stays production whatever the checks say now: the gate never demotes.
    """
    accuracy, macro_f1 = test.accuracy, test.macro_f1
    checks = _thresholds(accuracy, macro_f1, params)
    passed, verdict = all(ok for _, ok in checks), ", ".join(text for text, _ in checks)
    if current is not None and current[0] == version:
        # publish returned the production version: the same model and metrics. The gate
        # only promotes, so thresholds raised since leave it production.
        if passed:
            return PRODUCTION, (
                f"nothing changed since it was registered, test accuracy {accuracy:.4f}"
            )
        below = " and ".join(text for text, ok in checks if not ok)
        return PRODUCTION, (
            f"nothing changed since it was registered; now below a threshold: {below}; "
            "the gate never demotes, so it stays until a model meets the thresholds and "
            f"beats its test accuracy by the margin {params.min_improvement:.4f}"
        )
    if len(labels) < 2:
        return CANDIDATE, (
            f"the model knows {len(labels)} class ({', '.join(map(repr, labels))}) and answers "
            "it for every image; production is unchanged"
        )
    if not passed:
        return CANDIDATE, f"{verdict}; production is unchanged"
    if current is None:
        return PRODUCTION, f"{verdict}; first production model"
    prod_version, prod_accuracy = current
    gain = accuracy - prod_accuracy
    if gain > 0 and gain >= params.min_improvement - 1e-12:
        return PRODUCTION, (
            f"test accuracy {accuracy:.4f} beats production version {prod_version} "
            f"({prod_accuracy:.4f}) by {gain:+.4f} ≥ margin {params.min_improvement:.4f}"
        )
    return CANDIDATE, (
        f"test accuracy {accuracy:.4f} does not beat production version {prod_version} "
        f"({prod_accuracy:.4f}) by the margin {params.min_improvement:.4f} "
        f"(change {gain:+.4f}); production is unchanged"
    )


def training_classes(lineage: Lineage) -> TrainingClasses | None:
    """Training examples per class of the data the lineage names, for the drift gauge.

    Read from that data's `stats.json` at register time (the registry version carries
    them, so serving never reaches back into the data). None, with a warning, when the
    data is gone or was processed again (its `data_hash` differs from the lineage's).
    """
    if not lineage.data or not lineage.data_hash:
        return None
    uri = storage.join(lineage.data, STATS)
    try:
        stats = Stats.read(uri)
    except (OSError, ContractError) as exc:
        log.warning("%s: unreadable (%s); the version has no training class counts", uri, exc)
        return None
    if stats.data_hash != lineage.data_hash:
        log.warning(
            "%s: data_hash %s is not the model's %s; the version has no training class counts",
            uri,
            stats.data_hash[:12],
            lineage.data_hash[:12],
        )
        return None
    return TrainingClasses.from_stats(stats)


def _backfill(registry: ModelRegistry, version: str, classes: TrainingClasses | None) -> None:
    """Add the class counts to an existing version published without them.

    Publishing the same model again returns the existing version untouched, so a
    version registered before the counts were recorded gets them here. They are
    derived from the data the lineage names (same `data_hash`), not part of the
    version's identity, and written atomically like any registry file.
    """
    uri = storage.join(registry.version_uri(version), TRAINING_CLASSES)
    if classes is not None and not storage.exists(uri):
        classes.write(uri)


def register(
    candidate: Path,
    metrics_path: str,
    registry_root: str,
    params: RegistryParams,
    optimized: Path | None = None,
    timing: OptimizeParams | None = None,
) -> RegisterResult:
    """Publish `candidate` with its metrics; alias it `production` if it passes the gate.

    The version holds the candidate's files, the metrics, a model card, the lineage
    with the run's facts, and the training class counts (`training_classes.json`,
    when the data the lineage names is still there).

    With `optimized` (the optimize stage's folder), every variant is timed in LiteRT here
    (`timing`'s latency runs and batch; defaults when None) and the fastest eligible one's
    `.tflite` becomes the version's `model.tflite` (so every reader of a version serves
    it). The version gets the timed `optimization.json` and its plot `optimization.png`,
    and `version.json` records `variant` and `variant_reason`; the variant's file is part
    of the version's identity.

    Raises `trainer.inputs.InputError` (a `ValueError`) for a missing or malformed
    `metrics_path` or optimization report, before anything is published.
    """
    metrics = check_metrics(metrics_path)
    measured = check_optimized(optimized, candidate) if optimized is not None else None
    labels = read_labels(candidate / LABELS)
    # The candidate's lineage with its run's facts and today's git state: the version
    # records them, but only the model's files and metrics decide whether it is new.
    lineage = version_lineage(candidate)
    classes = training_classes(lineage)
    registry = ModelRegistry(registry_root, params.model_name)
    # Read before publishing: an alias left on a deleted version is no production, even
    # once publish reuses that version's number for a new model.
    current = production_accuracy(registry)
    extra: dict[str, object] = {"test_accuracy": metrics.test.accuracy}
    identity = version_identity(candidate, metrics)
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        staging = Path(tmp) / "model"
        shutil.copytree(candidate, staging, ignore=shutil.ignore_patterns(RUN_RECORD))
        lineage.write(staging / LINEAGE)
        metrics.write(staging / METRICS)
        if classes is not None:
            classes.write(staging / TRAINING_CLASSES)
        report = None
        if optimized is not None and measured is not None:
            stage_hash = storage.sha256_file(optimized / OPTIMIZATION)
            report = _served_before(registry, identity, stage_hash) or _time_and_select(
                measured, optimized, timing or OptimizeParams()
            )
            extra |= {
                "variant": report.selected,
                "variant_reason": report.reason,
                "candidate_hash": identity,
                "optimization_hash": stage_hash,
            }
            identity = _serve_variant(staging, report, optimized, identity)
        storage.write_text(
            staging / MODEL_CARD, model_card(params.model_name, metrics, lineage, report)
        )
        version = registry.publish(staging, extra=extra, content_hash=identity)
    _backfill(registry, version, classes)
    alias, reason = gate(current, version, metrics.test, params, labels)
    registry.set_alias(alias, version)
    return RegisterResult(
        model=params.model_name,
        version=version,
        alias=alias,
        promoted=alias == PRODUCTION,
        was_production=current is not None and current[0] == version,
        reason=reason,
        uri=registry.version_uri(version),
    )


def track_register(
    registry: ModelRegistry, record: RegisterResult, enabled: bool, settings: Settings
) -> None:
    """With tracking on, a W&B run of job type `register` logs the version's files as the
    W&B `model` artifact `record.model` with the aliases [the gate's alias, the version]
    (W&B moves an alias off the artifact's other versions, as aliases.json does), and
    the version's timed optimization table and served variant when it has them.

    A gs:// version is downloaded to a temporary folder first (W&B uploads local files).
    """
    report = registry.read_document(record.version, OPTIMIZATION, Optimization)
    tracker = Tracker(enabled=enabled, settings=settings)
    if not tracker.enabled:
        return
    tracker.start(config={"model": record.model, "version": record.version}, job_type="register")
    try:
        with tempfile.TemporaryDirectory(prefix="register-wandb-") as tmp:
            folder = Path(record.uri)
            if storage.is_gcs(record.uri):
                storage.download_tree(record.uri, tmp)
                folder = Path(tmp)
            tracker.log_model(folder, record.model, aliases=[record.alias, record.version])
        tracker.summary({"version": record.version, "alias": record.alias})
        if report is not None:
            titles, rows = table(report)
            tracker.log_table("optimization", titles, rows)
            tracker.summary({"selected": report.selected, "selection_reason": report.reason})
    finally:
        tracker.finish()


def _time_and_select(
    measured: tuple[Optimization, np.ndarray], optimized: Path, timing: OptimizeParams
) -> Optimization:
    """Time every variant of the optimize folder here and apply the selection rule."""
    table, images = measured
    return select(time_variants(table, optimized, images, timing), timing.latency_tie)


def _served_before(
    registry: ModelRegistry, candidate_hash: str, stage_hash: str
) -> Optimization | None:
    """The timed report of a version already published from this candidate and these
    variants (the same optimize report, byte for byte), or None.

    Registering the same model again must give the same version: timed again, two close
    variants could swap places and make a new one. So the choice is made once per
    candidate and optimize folder, and a re-run keeps it. A version whose report is
    unreadable is passed over (the variants are timed again).
    """
    for version in reversed(registry.versions()):
        try:
            info = registry.version_info(version)
            if (info.get("candidate_hash"), info.get("optimization_hash")) != (
                candidate_hash,
                stage_hash,
            ):
                continue
            report = registry.read_document(version, OPTIMIZATION, Optimization)
        except (OSError, ContractError) as exc:
            log.warning("version %s: unreadable (%s); timing the variants again", version, exc)
            continue
        if report is not None and report.selected is not None:
            return report
    return None


def _serve_variant(staging: Path, report: Optimization, optimized: Path, identity: str) -> str:
    """Put the selected variant in `staging` as the served model, with the timed table
    and its plot; returns the version's new identity.

    The candidate's float32 `.tflite` is replaced, so the identity adds the variant's
    name and file hash: the same candidate served as another variant is another version.
    """
    model_file = optimized / report.variant(str(report.selected)).file
    shutil.copyfile(model_file, staging / TFLITE_FILE)
    report.write(staging / OPTIMIZATION)
    storage.write_bytes(staging / OPTIMIZATION_PNG, plot_png(report))
    served = f"{identity}\n{report.selected}\n{storage.sha256_file(model_file)}"
    return hashlib.sha256(served.encode()).hexdigest()
