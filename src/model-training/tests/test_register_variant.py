"""Issue 14: `register --optimized` times the variants, serves the fastest eligible one and
records why; without the flag register is unchanged; a broken optimize folder is one line,
nothing published."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from variant_models import make_candidate

from common.contracts import Metrics, Optimization
from common.params import OptimizeParams, RegistryParams
from common.registry import ModelRegistry
from trainer.inputs import InputError
from trainer.lineage import version_identity
from trainer.register import register

PARAMS = RegistryParams(model_name="m", min_accuracy=0.5, min_macro_f1=0.5)
TIMING = OptimizeParams(latency_runs=20, throughput_batch=4)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny candidate and its optimize folder with real LiteRT variants, made once."""
    root = tmp_path_factory.mktemp("register-variant")
    make_candidate(root)
    return root


def copy(built: Path, root: Path, eligible: tuple[str, ...] = ("int8",)) -> tuple[Path, str]:
    """The candidate and its optimize folder in `root`, with only `eligible` marked so."""
    for name in ("candidate", "optimized"):
        shutil.copytree(built / name, root / name)
    shutil.copyfile(built / "metrics.json", root / "metrics.json")
    report = root / "optimized" / "optimization.json"
    document = json.loads(report.read_text())
    for row in document["variants"]:
        row["eligible"] = row["name"] in eligible
    report.write_text(json.dumps(document))
    return root / "candidate", str(root / "metrics.json")


def publish(root: Path, model: Path, metrics: str) -> Path:
    return Path(register(model, metrics, str(root / "r"), PARAMS, root / "optimized", TIMING).uri)


def test_without_optimized_register_is_as_before(built: Path, tmp_path: Path) -> None:
    model, metrics = copy(built, tmp_path)
    version = Path(register(model, metrics, str(tmp_path / "r"), PARAMS).uri)
    info = json.loads((version / "version.json").read_text())
    assert set(info) == {"name", "content_hash", "published_at", "test_accuracy", "version"}
    assert info["content_hash"] == version_identity(model, Metrics.read(metrics))
    assert (version / "model.tflite").read_bytes() == (model / "model.tflite").read_bytes()
    assert not (version / "optimization.json").exists()
    assert "## Optimization" not in (version / "model_card.md").read_text()


def test_the_fastest_eligible_variant_is_served_and_the_version_says_why(
    built: Path, tmp_path: Path
) -> None:
    model, metrics = copy(built, tmp_path, eligible=("float32", "int8"))
    # No tie margin: with the default 10 %, float32 (the smaller file of this tiny model)
    # is rightly served whenever it is within 10 % of int8, which timing decides
    # (the margin's rule has its own tests in test_optimize.py).
    timing = TIMING.model_copy(update={"latency_tie": 0.0})
    version = Path(
        register(model, metrics, str(tmp_path / "r"), PARAMS, tmp_path / "optimized", timing).uri
    )
    report = Optimization.read(version / "optimization.json")
    # Timed here, every row; the stage's report had no timings.
    assert all(row.latency_p50_ms and row.latency_p95_ms for row in report.variants)
    assert all(row.throughput_per_s for row in report.variants)
    assert all(row.latency_p50_ms <= row.latency_p95_ms for row in report.variants)  # type: ignore[operator]
    eligible = [row for row in report.variants if row.eligible]
    fastest = min(eligible, key=lambda row: (row.latency_p50_ms, row.bytes))
    assert report.selected == fastest.name
    served = (tmp_path / "optimized" / fastest.file).read_bytes()
    assert (version / "model.tflite").read_bytes() == served
    info = json.loads((version / "version.json").read_text())
    assert (info["variant"], info["variant_reason"]) == (report.selected, report.reason)
    assert f"{fastest.name} 1.0000, p50 {fastest.latency_p50_ms:.3f} ms" in str(report.reason)
    card = (version / "model_card.md").read_text()
    assert f"Serves the `{fastest.name}` variant: {report.reason}." in card
    assert f"| **{fastest.name}** | 1.0000 |" in card and card.count("| yes | yes |") == 1
    assert "p50 ms" in card
    assert (version / "optimization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The stage's folder and the candidate are left alone.
    untimed = Optimization.read(tmp_path / "optimized" / "optimization.json")
    assert untimed.selected is None and untimed.variants[0].latency_p50_ms is None
    assert (model / "model.tflite").read_bytes() == (
        tmp_path / "optimized/float32.tflite"
    ).read_bytes()


def test_nothing_eligible_serves_float32(built: Path, tmp_path: Path) -> None:
    model, metrics = copy(built, tmp_path, eligible=())
    version = publish(tmp_path, model, metrics)
    info = json.loads((version / "version.json").read_text())
    assert info["variant"] == "float32" and "serving float32" in info["variant_reason"]
    assert (version / "model.tflite").read_bytes() == (model / "model.tflite").read_bytes()


def test_another_variant_is_another_version_and_a_rerun_is_the_same(
    built: Path, tmp_path: Path
) -> None:
    model, metrics = copy(built, tmp_path)
    root = str(tmp_path / "r")
    plain = register(model, metrics, root, PARAMS).version
    served = register(model, metrics, root, PARAMS, tmp_path / "optimized", TIMING).version
    again = register(model, metrics, root, PARAMS, tmp_path / "optimized", TIMING).version
    assert plain != served == again
    assert ModelRegistry(root, "m").versions() == [plain, served]


def _rewrite(root: Path, change: Callable[[dict[str, Any]], object]) -> None:
    path = root / "optimized" / "optimization.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


def _archive(path: Path) -> None:
    with path.open("wb") as file:  # a path would get ".npz" appended
        np.savez(file, np.zeros((2, 8, 8, 1), np.uint8))


def _elsewhere(document: dict[str, Any]) -> None:
    document["variants"][1]["file"] = "../candidate/model.tflite"


BROKEN: dict[str, tuple[Callable[[Path], object], str]] = {
    "not JSON": (
        lambda d: (d / "optimized/optimization.json").write_text("{nope"),
        "optimization.json: not valid JSON",
    ),
    "a field missing": (
        lambda d: _rewrite(d, lambda doc: doc.pop("max_accuracy_drop")),
        "optimization.json: max_accuracy_drop: Field required",
    ),
    "no float32 row": (
        lambda d: _rewrite(d, lambda doc: doc["variants"].pop(0)),
        "no 'float32' row among the variants ['int8']",
    ),
    "a variant's file gone": (
        lambda d: (d / "optimized/float32.tflite").unlink(),
        "float32.tflite: variant 'float32''s model is missing",
    ),
    "a variant's file elsewhere": (
        lambda d: _rewrite(d, _elsewhere),
        "names the file '../candidate/model.tflite', not a .tflite beside the report",
    ),
    "the timing images gone": (
        lambda d: (d / "optimized/timing_images.npy").unlink(),
        "timing_images.npy: the test images register times the variants on are missing",
    ),
    "no report": (
        lambda d: (d / "optimized/optimization.json").unlink(),
        "optimization.json: not found",
    ),
    "the timing images not an array": (
        lambda d: (d / "optimized/timing_images.npy").write_bytes(b"not numpy"),
        "timing_images.npy: not a NumPy array file",
    ),
    "the timing images not images": (
        lambda d: np.save(d / "optimized/timing_images.npy", np.zeros((3, 8), np.uint8)),
        "timing_images.npy: uint8 [3, 8] is not a uint8 array of images",
    ),
    "timing images of another size": (
        lambda d: np.save(d / "optimized/timing_images.npy", np.zeros((2, 5, 5, 1), np.uint8)),
        "images of shape [5, 5, 1], the model takes [8, 8, 1] (preprocess.json)",
    ),
    # found only when LiteRT runs the file: the folder looked right
    "a variant's file not a model": (
        lambda d: (d / "optimized/int8.tflite").write_bytes(b"not a flatbuffer"),
        "int8.tflite: LiteRT cannot run variant 'int8' on the timing images",
    ),
    "the timing images an empty file": (
        lambda d: (d / "optimized/timing_images.npy").write_bytes(b""),
        "timing_images.npy: not a NumPy array file",
    ),
    "the timing images an archive": (
        lambda d: _archive(d / "optimized/timing_images.npy"),
        "timing_images.npy: an archive of arrays, not one array",
    ),
    "made from another candidate": (
        lambda d: (d / "candidate/model.tflite").write_bytes(b"a newer candidate"),
        "made from another candidate than",
    ),
    "labels of another candidate": (
        lambda d: (d / "candidate/labels.json").write_text('["cat", "dog"]'),
        "(labels.json is not its labels.json)",
    ),
    "the timing images empty": (
        lambda d: np.save(d / "optimized/timing_images.npy", np.zeros((0, 8, 8, 1), np.uint8)),
        "timing_images.npy: uint8 [0, 8, 8, 1] is not a uint8 array of images",
    ),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_optimize_folder_is_refused_before_anything_is_published(
    built: Path, tmp_path: Path, case: str
) -> None:
    model, metrics = copy(built, tmp_path)
    make, message = BROKEN[case]
    make(tmp_path)
    with pytest.raises(InputError, match="re-run the optimize stage") as caught:
        publish(tmp_path, model, metrics)
    assert message in str(caught.value)
    assert not (tmp_path / "r").exists() or not ModelRegistry(tmp_path / "r", "m").versions()


def test_the_cli_says_which_variant_it_serves_or_what_is_wrong(built: Path, tmp_path: Path) -> None:
    copy(built, tmp_path)
    params = {"registry": {"model_name": "m"}, "optimize": {"latency_runs": 20}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def cli(*extra: str) -> subprocess.CompletedProcess[str]:
        args = ["register", "--model", "candidate", "--metrics", "metrics.json", "--registry", "r"]
        return subprocess.run(
            [sys.executable, "-m", "trainer", *args, *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    served = cli("--optimized", "optimized")
    assert served.returncode == 0, served.stderr
    assert served.stdout.startswith("register: m version 1 (int8 variant) promoted")
    (tmp_path / "optimized/optimization.json").write_text("{nope")
    broken = cli("--optimized", "optimized")
    assert broken.returncode == 2
    lines = broken.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimization.json: not valid JSON" in lines[0], broken.stderr
    assert "Traceback" not in broken.stderr


def register_cli(
    root: Path, params: dict[str, Any], **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m trainer register --optimized optimized` in `root` with `params`."""
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["register", "--model", "candidate", "--metrics", "metrics.json", "--registry", "r"]
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args, "--optimized", "optimized"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_with_tracking_the_timed_table_goes_to_wandb(built: Path, tmp_path: Path) -> None:
    copy(built, tmp_path)
    params = {
        "registry": {"model_name": "m"},
        "optimize": {"latency_runs": 20},
        "train": {"tracking": "wandb"},
    }
    result = register_cli(tmp_path, params, MEGA_WANDB_MODE="offline", MEGA_WANDB_DIR="runs")
    assert result.returncode == 0, result.stderr
    [table_file] = (tmp_path / "runs").rglob("optimization_*.table.json")
    table = json.loads(table_file.read_text())
    assert {"p50 ms", "images/s (batch)", "eligible", "served"} <= set(table["columns"])
    served = table["columns"].index("served")
    assert [line[0] for line in table["data"] if line[served]] == ["int8"]


def test_a_candidate_without_its_model_is_named(built: Path, tmp_path: Path) -> None:
    model, metrics = copy(built, tmp_path)
    (model / "model.tflite").unlink()
    with pytest.raises(InputError, match="re-run the train stage") as caught:
        publish(tmp_path, model, metrics)
    assert "candidate/model.tflite: not found" in str(caught.value)


def test_a_wandb_failure_after_publishing_is_a_warning(built: Path, tmp_path: Path) -> None:
    # The version is published before the table goes to W&B: a failure there must not
    # report the registration as failed (DVC would not record the stage).
    copy(built, tmp_path)
    params = {"registry": {"model_name": "m"}, "train": {"tracking": "wandb"}}
    (tmp_path / "afile").write_text("not a folder")
    result = register_cli(tmp_path, params, MEGA_WANDB_MODE="offline", MEGA_WANDB_DIR="afile")
    assert result.returncode == 0, result.stderr
    assert "register: warning: the model artifact did not reach W&B" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("register: m version 1 (int8 variant) promoted")


def test_registering_again_keeps_the_choice_without_timing_again(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Timed again, two close variants could swap places and make a new version of the
    # same model (it happened under load): the choice is made once per candidate and
    # optimize folder.
    model, metrics = copy(built, tmp_path, eligible=("float32", "int8"))
    first = publish(tmp_path, model, metrics)

    def timed_again(*args: object) -> None:
        raise AssertionError("the variants were timed again")

    monkeypatch.setattr("trainer.register.time_variants", timed_again)
    assert publish(tmp_path, model, metrics) == first
    assert ModelRegistry(tmp_path / "r", "m").versions() == ["1"]
    # Other variants (another optimize report) are timed.
    _rewrite(tmp_path, lambda doc: doc.update(max_accuracy_drop=0.02))
    with pytest.raises(AssertionError, match="timed again"):
        publish(tmp_path, model, metrics)
