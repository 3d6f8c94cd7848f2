"""`mega run -S` on a freshly committed project: a real DVC experiment, compared with `mega exp`.

The project is new (nothing has run, the DVC cache is empty), as on a fresh clone: the
experiment runs every stage but register in DVC's temporary copy, and the workspace,
params.yaml included, is left exactly as it was.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import GIT_IDENTITY, REPO, TINY_PARAMS, write_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEGA = str(Path(sys.executable).parent / "mega")
ENV = {
    **GIT_IDENTITY,
    "COLUMNS": "250",
    "MEGA_WANDB_MODE": "offline",
}
NAME = "one-epoch"


def sh(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args, cwd=cwd, env={**os.environ, **ENV}, capture_output=True, text=True, timeout=900
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{args} exited {result.returncode}:\n{output}"
    assert "Traceback" not in output, output
    return result


def wandb_runs(folder: Path) -> Iterator[tuple[str, str, str]]:
    """(group, name, job type) of each W&B run recorded under `folder`.

    A run file is a LevelDB-style log (a 7-byte header, then 32 KiB blocks of records:
    CRC, length, kind, data) of protobuf `Record`s; the first `run` record says it.
    """
    from wandb.proto import wandb_internal_pb2

    for path in sorted(folder.rglob("run-*.wandb")):
        raw, position, block, pending = path.read_bytes(), 7, 32768, b""
        while position + 7 <= len(raw):
            if block - position % block < 7:  # a block's tail too short for a header
                position += block - position % block
                continue
            _, length, kind = struct.unpack("<IHB", raw[position : position + 7])
            data = raw[position + 7 : position + 7 + length]
            position += 7 + length
            pending = data if kind in (1, 2) else pending + data
            if kind not in (1, 4):
                continue  # the first or a middle part of a longer record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "run":
                yield record.run.run_group, record.run.display_name, record.run.job_type
                break


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed copy of the template's pipeline, tracking to W&B offline."""
    root = tmp_path_factory.mktemp("experiments")
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / ".gitignore", root)
    ignore = shutil.ignore_patterns("__pycache__", "tests", "*.egg-info")
    shutil.copytree(REPO / "src", root / "src", ignore=ignore)
    write_params(root, {"train": {"tracking": "wandb"}})
    sh(["git", "init", "-q"], root)
    sh([sys.executable, "-m", "dvc", "init", "-q"], root)
    sh([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    shutil.copy(REPO / ".dvcignore", root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "template"], root)
    return root


@pytest.fixture(scope="module")
def experiment(project: Path) -> tuple[subprocess.CompletedProcess[str], bytes]:
    """`mega run -S train.epochs=1` once; returns its result and params.yaml before it."""
    before = (project / "params.yaml").read_bytes()
    return sh([MEGA, "run", "-S", "train.epochs=1", "--name", NAME], project), before


def test_the_experiment_leaves_params_and_the_workspace_unchanged(
    project: Path, experiment: tuple[subprocess.CompletedProcess[str], bytes]
) -> None:
    result, before = experiment
    assert "ran: collect, process, train, evaluate, optimize" in result.stdout
    assert (project / "params.yaml").read_bytes() == before
    status = sh(["git", "status", "--porcelain"], project).stdout
    assert status == "", status
    # register never ran: no registry, so no production model was promoted
    assert not (project / "models/digits-cnn").exists()


def test_the_summary_shows_the_experiments_own_params_and_metrics(
    experiment: tuple[subprocess.CompletedProcess[str], bytes],
) -> None:
    out = experiment[0].stdout
    assert f"Experiment {NAME}" in out
    assert f"train.epochs {TINY_PARAMS['train']['epochs']} → 1" in out
    assert "test metrics" in out and "accuracy 0." in out
    assert f"runs named {NAME}, group {NAME}" in out


def test_exp_show_and_diff_list_it_with_its_metric(project: Path, experiment: object) -> None:
    show = sh([MEGA, "exp", "show"], project).stdout
    [row] = [line for line in show.splitlines() if f" {NAME} " in line]
    assert "accuracy 0." in row and "macro F1" in row
    diff = sh([MEGA, "exp", "diff", NAME], project).stdout
    [epochs] = [line for line in diff.splitlines() if "train.epochs" in line]
    epochs_before = TINY_PARAMS["train"]["epochs"]
    cells = [cell.strip() for cell in epochs.split("│") if cell.strip()]
    assert cells[-3:] == [str(epochs_before), "1", f"{1 - epochs_before:+d}"], epochs


def test_its_wandb_runs_are_in_the_workspace_grouped_and_named(
    project: Path, experiment: object
) -> None:
    runs = list(wandb_runs(project / ".wandb"))
    assert {(group, name) for group, name, _ in runs} == {(NAME, NAME)}
    assert {job for _, _, job in runs} == {"train", "optimize"}
