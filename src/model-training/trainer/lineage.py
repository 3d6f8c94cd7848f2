"""Where a model came from: data version, parameters, code version, tracking run.

Two kinds of fact, kept apart so that training is reproducible:

- `lineage.json` in the candidate holds what determines the model (data path and
  hash, parameters, TensorFlow version). DVC hashes the candidate, so nothing in it
  may change from run to run of the same inputs.
- `training_run.json` beside it holds what differs per run (when, which W&B run).
  `.dvcignore` keeps it out of the candidate's DVC hash; it carries the hash of the
  files it describes, so a record left over from another run is never believed.

`trainer register` merges both into the registry version's `lineage.json`, with the
git commit and dirty flag read at register time (the registry is not a DVC output).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from common import storage
from common.contracts import LINEAGE, RUN_RECORD, ContractError, Lineage, Metrics, RunRecord

RUN_FACTS = ("trained_at", "wandb_run_id")


def model_hash(folder: Path) -> str:
    """The identity of a trained model: its folder's tree hash without the run record."""
    return storage.tree_hash(folder, exclude={RUN_RECORD})


def version_identity(candidate: Path, metrics: Metrics) -> str:
    """What makes a registry version: the model's files and their evaluation, nothing per-run.

    Training the same inputs again gives the same identity, so no new version; the same
    model evaluated on other data is a new version, whose metrics.json stays true.
    """
    evaluation = json.dumps(metrics.document(), sort_keys=True)
    return hashlib.sha256(f"{model_hash(candidate)}\n{evaluation}".encode()).hexdigest()


def pipeline_outputs(root: Path = Path()) -> list[str]:
    """Files the pipeline itself rewrites in git (dvc.lock and dvc.yaml's plain outputs).

    A run rewrites them, so their state says nothing about whether the code and
    configuration that made a model were committed.
    """
    outputs = ["dvc.lock"]
    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return outputs  # no pipeline file here (an image): only the lock is known
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []) or []:
                path = entry if isinstance(entry, str) else next(iter(entry))
                if "${" not in path:  # templated outputs are DVC-cached data, not in git
                    outputs.append(path)
    return outputs


def git_state(root: Path = Path()) -> dict[str, Any]:
    """The commit and whether tracked inputs differ from it; GIT_SHA when git is absent.

    `git_dirty` ignores the pipeline's own outputs (`pipeline_outputs`): a fresh clone
    that re-creates the committed `dvc.lock` and reports is not "local changes".
    """
    excludes = [f":(exclude){path}" for path in pipeline_outputs(root)]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout.strip()
        )
        return {"git_sha": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": os.environ.get("GIT_SHA", "unknown"), "git_dirty": None}


def build_lineage(
    *, data: str, data_hash: str, params: dict[str, Any], wandb_run: str | None
) -> Lineage:
    """The model's lineage; the per-run facts (`RUN_FACTS`) go to `RUN_RECORD` on export."""
    import tensorflow as tf

    return Lineage(
        data=data,
        data_hash=data_hash,
        params=params,
        tensorflow=tf.__version__,
        trained_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        wandb_run_id=wandb_run,
    )


def write_lineage(folder: Path, lineage: Lineage) -> None:
    """Write `lineage.json` (stable facts); call last, then `write_run_record`."""
    # Re-validated from the document, so the run facts are unset (not written), not None.
    stable = {key: value for key, value in lineage.document().items() if key not in RUN_FACTS}
    Lineage.model_validate(stable).write(folder / LINEAGE)


def write_run_record(folder: Path, lineage: Lineage) -> None:
    """Write `RUN_RECORD`: this run's facts and the hash of the files it produced."""
    record = RunRecord(
        trained_at=lineage.trained_at,
        wandb_run_id=lineage.wandb_run_id,
        model_hash=model_hash(folder),
    )
    record.write(folder / RUN_RECORD)


def version_lineage(candidate: Path, root: Path = Path()) -> Lineage:
    """The lineage a registry version records: the candidate's, its run's, git's now.

    The run facts are left out when the run record is missing or describes other files
    (e.g. DVC restored this candidate from its cache, without the record), or unreadable.
    """
    lineage = Lineage.read(candidate / LINEAGE).document()
    try:
        record = RunRecord.read(candidate / RUN_RECORD)
    except (FileNotFoundError, ContractError):
        record = None
    if record is not None and record.model_hash == model_hash(candidate):
        lineage.update(record.model_dump(include=set(RUN_FACTS)))
    return Lineage.model_validate({**lineage, **git_state(root)})
