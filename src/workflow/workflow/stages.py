"""The stages as dvc.yaml defines them: the one definition of what each stage runs.

dvc.yaml's `cmd` of a stage is the container's own CLI (`python -m trainer train …`);
docker-compose.yml runs the same command in the stage's image (a test keeps them equal)
and the kfp pipeline (`workflow.pipeline`) is generated from it, each local path of the
command replaced by the GCS URI of the kfp artifact that holds it. The `params:` a stage
declares are what its command reads of params.yaml: DVC re-runs the stage when one
changes, and the pipeline keys its Vertex AI cache on them the same way (with the
same images).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DVC_FILE = "dvc.yaml"
# The one variable the stage commands use (params.yaml's top-level `dataset`).
DATASET_VARIABLE = "${dataset}"


class StageDefinitionError(ValueError):
    """dvc.yaml defines a stage in a way the pipeline cannot run (a usage error)."""


@dataclass(frozen=True)
class Stage:
    """One stage of dvc.yaml, with `${dataset}` filled in."""

    name: str
    command: list[str]  # the whole command, e.g. python -m trainer train --data …
    deps: list[str]  # paths only, as dvc.yaml lists them
    outs: list[str]  # every output path: outs, metrics, plots
    params: list[str]  # params.yaml keys it reads: sections or dotted keys

    @property
    def program(self) -> list[str]:
        """`python -m <module>`: the image's ENTRYPOINT."""
        if self.command[:2] != ["python", "-m"] or len(self.command) < 3:
            raise StageDefinitionError(
                f"{DVC_FILE} stage {self.name}: its cmd must start `python -m <module>` (a "
                f"container's CLI), not {shlex.join(self.command[:3])!r}"
            )
        return self.command[:3]

    @property
    def args(self) -> list[str]:
        """What follows the program: the subcommand, if any, and the options."""
        return self.command[len(self.program) :]

    def is_path(self, value: str) -> bool:
        """Whether an argument is one of the stage's paths: a dependency, an output, or
        the folder outputs are written into (`--report-dir reports`)."""
        return value in self.deps or any(
            out == value or out.startswith(value.rstrip("/") + "/") for out in self.outs
        )


def _paths(entries: list[Any] | None, dataset: str) -> list[str]:
    """The paths of a dvc.yaml list whose items are `path` or `{path: {options}}`."""
    paths = [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries or []]
    return [path.replace(DATASET_VARIABLE, dataset) for path in paths]


def read_stages(root: Path, dataset: str) -> dict[str, Stage]:
    """Every stage of `root`/dvc.yaml in its order, `${dataset}` filled in.

    Raises:
        StageDefinitionError: a stage uses another `${…}` variable, or declares
            params from another file than params.yaml.
    """
    document = yaml.safe_load((root / DVC_FILE).read_text())
    stages = {}
    for name, spec in document["stages"].items():
        text = " ".join(str(spec["cmd"]).split()).replace(DATASET_VARIABLE, dataset)
        if "${" in text:
            raise StageDefinitionError(
                f"{DVC_FILE} stage {name}: only {DATASET_VARIABLE} may be used in its cmd "
                "(the pipeline fills in no other variable)"
            )
        params = spec.get("params") or []
        if not all(isinstance(key, str) for key in params):
            raise StageDefinitionError(
                f"{DVC_FILE} stage {name}: params must be keys of params.yaml, not of other files"
            )
        outs = [spec.get(kind) for kind in ("outs", "metrics", "plots")]
        stages[name] = Stage(
            name=name,
            command=shlex.split(text),
            deps=_paths(spec.get("deps"), dataset),
            outs=[path for entries in outs for path in _paths(entries, dataset)],
            params=list(params),
        )
    return stages


def declared_params(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """The values of the params.yaml keys `stage` declares (dotted keys as dvc.yaml names
    them; a key params.yaml lacks is None, as the schema's default then applies)."""
    values: dict[str, Any] = {}
    for key in stage.params:
        node: Any = params
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        values[key] = node
    return values


def params_digest(stage: Stage, params: dict[str, Any]) -> str:
    """12 hex characters of the SHA-256 of the stage's declared params: equal exactly
    when DVC would call the stage's params unchanged."""
    text = json.dumps(declared_params(stage, params), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
