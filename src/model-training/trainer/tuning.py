"""The trainer's side of hyperparameter tuning: trial arguments in, the trial's metric out.

Vertex AI's HyperparameterTuningJob (and `mega tune`, which runs trials the same way)
appends `--<dotted params key>=<value>` to each trial's arguments; `parse_overrides`
reads them, `common.params.apply_overrides` applies them. After training the chief
reports `tune.metric` with cloudml-hypertune, which writes one JSON line per report to
`CLOUD_ML_HP_METRIC_FILE`, or to /tmp/hypertune/output.metrics when that is unset (the
file Vertex AI's trial agent reads).

`hypertune.HyperTune()` creates that folder and the report (re)writes the file, so it is
called only in a tuning trial (`in_tuning_trial`): a local or DVC training must not leave
a metrics file behind in /tmp.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from common.contracts import TUNING_METRIC_FILE_ENV, TUNING_TRIAL_ID_ENV
from common.params import TuneParams


class OverrideError(ValueError):
    """An extra argument that is not a `--<section>.<key>=<value>` parameter override."""


def parse_overrides(args: Sequence[str]) -> dict[str, str]:
    """`["--train.epochs=2", "--train.batch_size", "64", ...]` (the extra arguments of
    `trainer train`) as `{"train.epochs": "2", "train.batch_size": "64"}`, in order; a key
    given twice keeps its last value. Both `--key=value` and `--key value` are taken:
    Vertex AI's documentation shows its trials called the second way.

    Raises OverrideError naming the argument: an option the command does not know, or an
    override without a value.
    """
    overrides: dict[str, str] = {}
    rest = list(args)
    while rest:
        name, equals, value = rest.pop(0).partition("=")
        key = name.removeprefix("--")
        if not name.startswith("--") or "." not in key:
            raise OverrideError(
                f"no such option: {name} (see `trainer train --help`); a parameter override "
                "looks like --train.epochs=5"
            )
        if not equals:
            if not rest or rest[0].startswith("--"):
                raise OverrideError(f"{name}: give a value, as in {name}=<value>")
            value = rest.pop(0)
        overrides[key] = value
    return overrides


def in_tuning_trial(environ: Mapping[str, str] | None = None) -> bool:
    """True in a tuning trial: `CLOUD_ML_HP_METRIC_FILE` or `CLOUD_ML_TRIAL_ID` is set (a
    local trial sets both; hypertune reads both), or Vertex AI's `CLUSTER_SPEC` names a
    trial (its `task.trial`)."""
    env = os.environ if environ is None else environ
    if env.get(TUNING_METRIC_FILE_ENV) or env.get(TUNING_TRIAL_ID_ENV):
        return True
    try:
        spec = json.loads(env.get("CLUSTER_SPEC") or "{}")
    except json.JSONDecodeError:
        return False  # the strategy set-up reports a broken CLUSTER_SPEC
    task = spec.get("task") if isinstance(spec, dict) else None
    return isinstance(task, dict) and bool(task.get("trial"))


def tuning_metric(tune: TuneParams, final: Mapping[str, float]) -> float:
    """`tune.metric`'s last-epoch value from the fit's `final` metrics.

    Raises ValueError when the fit has no such metric (no validation split).
    """
    if tune.metric not in final:
        raise ValueError(
            f"tune.metric {tune.metric}: the training history has no such metric (it has "
            f"{', '.join(sorted(final)) or 'none'}); tuning needs a val split "
            "(process.split.val above 0)"
        )
    return float(final[tune.metric])


def report_metric(
    tune: TuneParams,
    final: Mapping[str, float],
    epochs: int,
    environ: Mapping[str, str] | None = None,
) -> float | None:
    """In a tuning trial, report `tune.metric` (last epoch, at step `epochs`) through
    cloudml-hypertune and return it; elsewhere do nothing and return None."""
    if not in_tuning_trial(environ):
        return None
    value = tuning_metric(tune, final)
    import hypertune  # only in a trial: its constructor creates the metric file's folder

    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=tune.metric, metric_value=value, global_step=epochs
    )
    return value
