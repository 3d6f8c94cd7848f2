"""Lineage: stable facts in the candidate, per-run facts beside it, git state at register time."""

import json
import subprocess
from pathlib import Path

import pytest

from common.contracts import Lineage
from common.params import RegistryParams
from trainer.lineage import git_state, version_lineage, write_lineage, write_run_record
from trainer.register import register

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]


def candidate(folder: Path, trained_at: str, weights: bytes = b"w") -> Path:
    folder.mkdir(parents=True)
    (folder / "model.tflite").write_bytes(weights)
    (folder / "labels.json").write_text(json.dumps(["a", "b"]))  # the gate needs two classes
    lineage = Lineage(data_hash="d", params={}, trained_at=trained_at, wandb_run_id="r1")
    write_lineage(folder, lineage)
    write_run_record(folder, lineage)
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: 'true'\n"
        "    metrics: [{reports/metrics.json: {cache: false}}]\n"
    )
    (tmp_path / "reports").mkdir()
    for name in ("dvc.lock", "params.yaml", "reports/metrics.json"):
        (tmp_path / name).write_text("a\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    return tmp_path


def test_pipeline_outputs_are_not_local_changes(repo: Path) -> None:
    (repo / "dvc.lock").write_text("rewritten by a run\n")
    (repo / "reports/metrics.json").write_text("rewritten by a run\n")
    state = git_state(repo)
    assert len(state["git_sha"]) == 40 and state["git_dirty"] is False
    (repo / "params.yaml").write_text("changed by hand\n")
    assert git_state(repo)["git_dirty"] is True


def test_candidate_lineage_holds_no_per_run_fact(tmp_path: Path) -> None:
    folder = candidate(tmp_path / "c", "2026-01-01T00:00:00+00:00")
    assert json.loads((folder / "lineage.json").read_text()) == {"data_hash": "d", "params": {}}
    merged = version_lineage(folder, tmp_path)
    assert merged.trained_at == "2026-01-01T00:00:00+00:00" and merged.wandb_run_id == "r1"


def test_a_run_record_of_other_files_is_not_believed(tmp_path: Path) -> None:
    folder = candidate(tmp_path / "c", "2026-01-01T00:00:00+00:00")
    (folder / "model.tflite").write_bytes(b"restored from another run")
    assert "trained_at" not in version_lineage(folder, tmp_path).document()


@pytest.mark.parametrize("record", ["", "[]", '{"trained_at": "t"}'])
def test_an_unreadable_run_record_is_not_believed(tmp_path: Path, record: str) -> None:
    """A cut-short or foreign training_run.json leaves the run facts out, not a traceback."""
    folder = candidate(tmp_path / "c", "2026-01-01T00:00:00+00:00")
    (folder / "training_run.json").write_text(record)
    merged = version_lineage(folder, tmp_path).document()
    assert "trained_at" not in merged and merged["data_hash"] == "d"


def test_the_same_model_trained_again_is_one_version(repo: Path) -> None:
    metrics = repo / "metrics.json"
    metrics.write_text(json.dumps({"test": {"accuracy": 0.95, "macro_f1": 0.95}}))
    params = RegistryParams(model_name="m", min_accuracy=0.5)
    models = str(repo / "models")
    first = register(
        candidate(repo / "one", "2026-01-01T00:00:00+00:00"), str(metrics), models, params
    )
    again = register(
        candidate(repo / "two", "2026-01-02T00:00:00+00:00"), str(metrics), models, params
    )
    assert first.version == again.version == "1"
    other = register(candidate(repo / "three", "x", weights=b"other"), str(metrics), models, params)
    assert other.version == "2"
    version = json.loads((repo / "models/m/1/lineage.json").read_text())
    assert version["trained_at"] == "2026-01-01T00:00:00+00:00" and "git_sha" in version
    assert not (repo / "models/m/1/training_run.json").exists()


def test_the_candidate_lineage_keeps_its_bytes(tmp_path: Path) -> None:
    """Written through the contract: sorted keys, unset fields and run facts left out."""
    lineage = Lineage(
        data="data/processed/x", data_hash="d", params={"train": {"epochs": 2}},
        tensorflow="2.21.0", trained_at="2026-01-01T00:00:00+00:00", wandb_run_id=None,
        extra_fact=1,
    )  # fmt: skip
    write_lineage(tmp_path, lineage)
    assert (tmp_path / "lineage.json").read_text() == (
        '{\n  "data": "data/processed/x",\n  "data_hash": "d",\n  "extra_fact": 1,\n'
        '  "params": {\n    "train": {\n      "epochs": 2\n    }\n  },\n'
        '  "tensorflow": "2.21.0"\n}\n'
    )
