"""DVC experiments: `mega run -S KEY=VALUE`, `mega run --tuned` and `mega exp show|diff`.

An experiment runs as `dvc exp run --temp`: DVC copies the committed project plus the
workspace's changes to tracked files into `.dvc/tmp/exps/…`, applies the overrides to
params.yaml *there*, runs the stages and records the result as a git ref
(`refs/exps/…`) with its outputs in the DVC cache. params.yaml and every file of the
workspace stay as they were.

What running in that copy means, and what is done about it:
- Overrides are checked here, against the params schema, before dvc starts: an unknown
  key, a bad value or a malformed `-S` fails in seconds with one line.
- `.env` is git-ignored, so the copy has none: the settings it (or the environment)
  gave `mega` are passed to the stages as MEGA_* variables.
- Relative paths would resolve inside the copy, which DVC deletes: offline W&B runs
  (MEGA_WANDB_DIR), a set MEGA_TRAIN_RUN_DIR and GOOGLE_APPLICATION_CREDENTIALS are made
  absolute in the workspace.
- An experiment stops before `register`: it never publishes into the registry, so it
  cannot promote a production model. To keep one: `dvc exp apply NAME`, then `mega run`
  registers it through the gate.
- Every W&B run of one experiment shares the group WANDB_RUN_GROUP=NAME and is named
  WANDB_NAME=NAME (wandb reads both from the environment).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common import storage
from common.params import ParamsError, PipelineParams, load_params
from common.settings import Settings
from workflow.project import dvc_error
from workflow.tuning import BEST_FILE, TUNING_DIR

PARAMS_FILE = "params.yaml"
# Where `mega tune` writes the best trial's parameters: dotted key → value.
TUNED = Path(TUNING_DIR) / BEST_FILE
# Stages an experiment leaves out: `register` publishes into the shared model registry.
NOT_IN_EXPERIMENTS = ("register",)
# Path settings that must point into the workspace, not DVC's temporary copy.
WORKSPACE_PATHS = ("wandb_dir", "train_run_dir")
CREDENTIALS = "GOOGLE_APPLICATION_CREDENTIALS"


class ExperimentError(ValueError):
    """Bad experiment input; the message says what was wrong and what to do."""


@dataclass(frozen=True)
class Override:
    """One `KEY=VALUE` as dvc takes it (no file prefix) and its dotted key."""

    text: str
    key: str


def parse_overrides(texts: Sequence[str], origin: str = "-S") -> list[Override]:
    """Parse `-S` values (`KEY=VALUE` or `params.yaml:KEY=VALUE`) as dvc will.

    Only a plain change of one key is taken: Hydra's `+key` (add), `~key` (delete) and
    sweeps (`choice(…)`, `range(…)`) raise ExperimentError, as does any other file.
    `origin` starts each error message (`-S`, or the file the values came from).
    """
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.errors import OverrideParseException

    parsed: list[Override] = []
    for text in texts:
        ((path, (override,)),) = to_path_overrides([text]).items()
        if path != PARAMS_FILE:
            raise ExperimentError(
                f"{origin} {text}: only keys of {PARAMS_FILE} can be set, not of {path}"
            )
        example = "e.g. -S train.epochs=5"
        if "=" not in override:
            raise ExperimentError(
                f"{origin} {text}: expected KEY=VALUE with a dotted {PARAMS_FILE} key, {example}"
            )
        try:
            (hydra,) = to_hydra_overrides([override])
        except OverrideParseException as exc:
            # Hydra's message: "Error parsing override …", the reason, a link to its grammar.
            lines = [line.strip() for line in str(exc).splitlines()]
            reason = next(
                (
                    line
                    for line in lines
                    if line and not line.startswith(("See ", "Error parsing override"))
                ),
                "Hydra's override grammar",
            )
            raise ExperimentError(
                f"{origin} {text}: not a KEY=VALUE dvc can read ({reason}); quote a value "
                f"with spaces or brackets, {example}"
            ) from exc
        if not hydra.key_or_group:
            raise ExperimentError(f"{origin} {text}: the key is missing, {example}")
        if hydra.is_add() or hydra.is_delete() or hydra.is_force_add():
            raise ExperimentError(
                f"{origin} {text}: only KEY=VALUE changes a key; add or remove keys by "
                f"editing {PARAMS_FILE}"
            )
        if hydra.is_sweep_override():
            raise ExperimentError(
                f"{origin} {text}: sweeps are not run by `mega run`; run one experiment "
                "per value, or search with `mega tune`"
            )
        parsed.append(Override(text=override, key=hydra.key_or_group))
    return parsed


def _dotted_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every section and leaf key of a nested mapping, dotted."""
    if not isinstance(tree, dict):
        return []
    keys: list[str] = []
    for name, value in tree.items():
        key = f"{prefix}{name}"
        keys += [key, *_dotted_keys(value, f"{key}.")]
    return keys


def _check_key(raw: dict[str, Any], override: Override, origin: str) -> None:
    """The key must already be in params.yaml: dvc (Hydra in struct mode) adds none."""
    node: Any = raw
    for part in override.key.split("."):
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return
    where = f"{origin} {override.text}"
    if override.key in _dotted_keys(PipelineParams().model_dump(mode="json")):
        raise ExperimentError(
            f"{where}: {override.key} is not written in {PARAMS_FILE} (its default applies); "
            "add it there to vary it"
        )
    close = difflib.get_close_matches(override.key, _dotted_keys(raw), n=1)
    hint = f"did you mean {close[0]}?" if close else f"{PARAMS_FILE} lists every key"
    raise ExperimentError(f"{where}: unknown parameter {override.key!r}; {hint}")


def check_overrides(
    params_path: Path, overrides: Sequence[Override], origin: str = "-S"
) -> PipelineParams:
    """params.yaml with `overrides` applied as dvc applies them, validated by the schema.

    The file itself is not changed (a copy is). Raises ExperimentError naming the
    override and the key when a key is unknown or a value is invalid.
    """
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    raw = yaml.safe_load(params_path.read_text()) or {}
    for override in overrides:
        _check_key(raw, override, origin)
    texts = [o.text for o in overrides]
    given = (
        " ".join(f"-S {t}" for t in texts) if origin == "-S" else f"{origin}'s {' '.join(texts)}"
    )
    with tempfile.TemporaryDirectory(prefix="mega-params-") as folder:
        copy = Path(folder) / PARAMS_FILE
        shutil.copyfile(params_path, copy)
        try:
            apply_overrides(copy, texts)
        except InvalidArgumentError as exc:
            cause = str(exc.__cause__ or exc).splitlines()[0]
            raise ExperimentError(f"{origin}: dvc cannot apply the values: {cause}") from exc
        try:
            return load_params(copy)
        except ParamsError as exc:
            # The message names the copy: name the file and the values instead.
            problem = str(exc).removeprefix(f"{copy}: ")
            raise ExperimentError(
                f"{PARAMS_FILE} with {given}: {problem}; give a valid value"
            ) from exc


def hydra_value(value: object) -> str:
    """A YAML value written so that dvc's `-S KEY=VALUE` reads it back unchanged.

    Raises ExperimentError for a mapping or another value that cannot be written.
    """
    from dvc.utils.hydra import to_hydra_overrides

    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, int | float):
        text = repr(value)
    elif isinstance(value, str):
        text = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    elif isinstance(value, list):
        text = "[" + ",".join(hydra_value(item) for item in value) + "]"
    else:
        raise ExperimentError(f"a value of type {type(value).__name__} cannot be set with -S")
    (read,) = to_hydra_overrides([f"key={text}"])
    back = read.value()
    same = back == value or (
        isinstance(value, float)
        and isinstance(back, float)
        and math.isnan(value) == math.isnan(back)
    )
    if not same:
        raise ExperimentError(f"{value!r} cannot be written as a -S value")
    return text


def tuned_overrides(root: Path) -> list[str]:
    """`tuning/best.yaml` (dotted key → value, written by `mega tune`) as `KEY=VALUE`s."""
    path = root / TUNED
    if not path.is_file():
        raise ExperimentError(f"{TUNED} not found: run `mega tune` first, it writes it")
    redo = "run `mega tune` again to write it"
    try:
        best = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ExperimentError(f"{TUNED}: not valid YAML{where}; {redo}") from exc
    if not isinstance(best, dict) or not best:
        raise ExperimentError(f"{TUNED}: expected dotted params keys with values; {redo}")
    try:
        return [f"{key}={hydra_value(value)}" for key, value in best.items()]
    except ExperimentError as exc:
        raise ExperimentError(f"{TUNED}: {exc}; {redo}") from exc


def experiment_env(root: Path, settings: Settings, name: str) -> dict[str, str]:
    """Variables for the `dvc exp run` process, so that its stages, running in DVC's
    temporary copy, see this workspace's settings and tag their W&B runs.

    Each MEGA_* setting given (by the environment or `.env`) is passed on; MEGA_WANDB_DIR,
    a relative MEGA_TRAIN_RUN_DIR and a relative GOOGLE_APPLICATION_CREDENTIALS become
    absolute paths in `root`.
    """
    env = {
        f"MEGA_{field.upper()}": str(getattr(settings, field))
        for field in sorted(settings.model_fields_set)
        if getattr(settings, field) is not None
    }
    for field in WORKSPACE_PATHS:
        value = getattr(settings, field)
        if value and not storage.is_gcs(value) and not Path(value).is_absolute():
            env[f"MEGA_{field.upper()}"] = str(root / value)
    # The Google libraries read this key file path relative to the working directory too.
    credentials = os.environ.get(CREDENTIALS)
    if credentials and not Path(credentials).is_absolute():
        env[CREDENTIALS] = str(root / credentials)
    env["WANDB_RUN_GROUP"] = name
    env["WANDB_NAME"] = name
    return env


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)


def baseline_commit(root: Path) -> str:
    """The commit experiments start from (HEAD); ExperimentError when there is none."""
    head = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head.returncode != 0:
        raise ExperimentError(
            "an experiment starts from a git commit and this repository has none; "
            "commit the project first"
        )
    return head.stdout.strip()


def experiment_name(root: Path, baseline: str, name: str | None, replace: bool) -> str:
    """`name`, checked to be a valid and (unless `replace`) unused experiment name on
    `baseline`; None: a new random name like DVC's own (`sworn-bowl`)."""
    from dvc.repo.experiments.refs import ExpRefInfo
    from dvc.repo.experiments.utils import gen_random_name

    def exists(ref: str) -> bool:
        return _git(root, "rev-parse", "--verify", "--quiet", ref).returncode == 0

    if name is None:
        drawn = gen_random_name()
        while exists(str(ExpRefInfo(baseline, drawn))):
            drawn = gen_random_name()  # the word pairs are many: a clash is rare
        return drawn
    ref = str(ExpRefInfo(baseline, name))
    if "/" in name or _git(root, "check-ref-format", ref).returncode != 0:
        raise ExperimentError(
            f"--name {name!r} is not a valid experiment name; use letters, digits, '-', '_' "
            "and '.' (no spaces, '/' or '..')"
        )
    if not replace and exists(ref):
        raise ExperimentError(
            f"an experiment named {name!r} already exists on commit {baseline[:7]}; choose "
            "another --name, or add --force to replace it"
        )
    return name


@dataclass(frozen=True)
class ExperimentRecord:
    """One row of `dvc exp show`: the workspace, a baseline commit, or an experiment."""

    name: str  # experiment name; a baseline's branch or short rev; "workspace"
    rev: str  # commit sha, or "workspace"
    baseline: str  # the baseline commit's sha ("workspace" for the workspace)
    is_experiment: bool
    created: str | None  # ISO time of the commit
    params: dict[str, Any]  # params.yaml, flattened to dotted keys
    metrics: dict[str, Any]  # the test metrics file, flattened (`test.accuracy`, …)
    error: str | None  # why dvc could not read it (a failed experiment)


def _record(
    entry: dict[str, Any], baseline: str, experiment: bool, metrics_file: str
) -> ExperimentRecord:
    from dvc.utils.flatten import flatten

    data = entry.get("data") or {}
    params = (data.get("params") or {}).get(PARAMS_FILE, {}).get("data") or {}
    metrics = (data.get("metrics") or {}).get(metrics_file, {}).get("data") or {}
    rev = str(entry.get("rev"))
    error = entry.get("error")
    return ExperimentRecord(
        name=entry.get("name") or (rev if rev == "workspace" else rev[:7]),
        rev=rev,
        baseline=baseline,
        is_experiment=experiment,
        created=data.get("timestamp"),
        params=flatten(params),
        metrics=flatten(metrics),
        error=error.get("msg") if isinstance(error, dict) else error,
    )


def read_show(show: list[dict[str, Any]], metrics_file: str) -> list[ExperimentRecord]:
    """The rows of `dvc exp show --json` (DVC 3), each baseline before its experiments."""
    records = []
    for entry in show:
        baseline = str(entry.get("rev"))
        records.append(_record(entry, baseline, False, metrics_file))
        for experiment in entry.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                records.append(_record(rev, baseline, True, metrics_file))
    return records


def load_experiments(
    root: Path, metrics_file: str, all_commits: bool = False
) -> list[ExperimentRecord]:
    """`dvc exp show --json` in `root`, read; ExperimentError when dvc fails."""

    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    result = subprocess.run(
        [*command, *(["--all-commits"] if all_commits else [])],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ExperimentError(f"dvc exp show failed: {dvc_error(result.stderr, 'no output')}")
    return read_show(json.loads(result.stdout or "[]"), metrics_file)


def differing_params(records: Sequence[ExperimentRecord]) -> list[str]:
    """Dotted params keys whose value is not the same in every record that has params."""
    with_params = [r for r in records if r.params]
    keys = sorted({key for r in with_params for key in r.params})
    return [k for k in keys if len({json.dumps(r.params.get(k)) for r in with_params}) > 1]
