"""Issue 14: `register --optimized` serves the selected variant and records why; without
the flag register is unchanged; a broken optimization report is one line, nothing published."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from variant_models import row

from common.contracts import Metrics
from common.params import RegistryParams
from common.registry import ModelRegistry
from trainer.inputs import InputError
from trainer.lineage import version_identity
from trainer.register import register

FLOAT32 = b"float32 stand-in: register only copies the file"
INT8 = b"int8 stand-in"
REASON = "fastest within 0.010 of float32's test accuracy (0.9900): int8 0.9900, p50 0.021 ms"
PARAMS = RegistryParams(model_name="m", min_accuracy=0.5, min_macro_f1=0.5)


def candidate(root: Path) -> tuple[Path, str]:
    folder = root / "candidate"
    folder.mkdir()
    (folder / "labels.json").write_text(json.dumps(["a", "b"]))
    spec = {"image_size": 8, "color_mode": "grayscale", "resize": "stretch"}
    (folder / "preprocess.json").write_text(json.dumps(spec))
    (folder / "lineage.json").write_text(json.dumps({"trained_at": "t", "params": {}}))
    (folder / "model.tflite").write_bytes(FLOAT32)
    metrics = root / "metrics.json"
    metrics.write_text(json.dumps({"test": {"accuracy": 0.99, "macro_f1": 0.99}}))
    return folder, str(metrics)


def report(**change: Any) -> dict[str, Any]:
    return {
        "baseline": "float32",
        "selected": "int8",
        "reason": REASON,
        "max_accuracy_drop": 0.01,
        "variants": [
            row("float32", "float32.tflite", len(FLOAT32), "float32", accuracy=0.99),
            row("int8", "int8.tflite", len(INT8), "uint8", accuracy=0.99, latency_p50_ms=0.021),
        ],
        **change,
    }


def optimized(root: Path, document: dict[str, Any] | str | None = None) -> Path:
    folder = root / "optimized"
    folder.mkdir(exist_ok=True)
    (folder / "float32.tflite").write_bytes(FLOAT32)
    (folder / "int8.tflite").write_bytes(INT8)
    text = document if isinstance(document, str) else json.dumps(document or report())
    (folder / "optimization.json").write_text(text)
    return folder


def test_without_optimized_register_is_as_before(tmp_path: Path) -> None:
    model, metrics = candidate(tmp_path)
    version = Path(register(model, metrics, str(tmp_path / "r"), PARAMS).uri)
    info = json.loads((version / "version.json").read_text())
    assert set(info) == {"name", "content_hash", "published_at", "test_accuracy", "version"}
    assert info["content_hash"] == version_identity(model, Metrics.read(metrics))
    assert (version / "model.tflite").read_bytes() == FLOAT32
    assert not (version / "optimization.json").exists()
    assert "## Optimization" not in (version / "model_card.md").read_text()


def test_the_selected_variant_is_served_and_the_version_says_why(tmp_path: Path) -> None:
    model, metrics = candidate(tmp_path)
    record = register(model, metrics, str(tmp_path / "r"), PARAMS, optimized(tmp_path))
    version = Path(record.uri)
    info = json.loads((version / "version.json").read_text())
    assert (info["variant"], info["variant_reason"]) == ("int8", REASON)
    assert (version / "model.tflite").read_bytes() == INT8
    assert json.loads((version / "optimization.json").read_text()) == report()
    card = (version / "model_card.md").read_text()
    assert f"Serves the `int8` variant: {REASON}." in card
    assert "| int8 | 0.9900 |" in card and card.count("| yes |") == 1
    assert (model / "model.tflite").read_bytes() == FLOAT32  # the candidate is left alone


def test_another_variant_is_another_version_and_a_rerun_is_the_same(tmp_path: Path) -> None:
    model, metrics = candidate(tmp_path)
    root = str(tmp_path / "r")
    plain = register(model, metrics, root, PARAMS).version
    served = register(model, metrics, root, PARAMS, optimized(tmp_path)).version
    again = register(model, metrics, root, PARAMS, optimized(tmp_path)).version
    assert plain != served == again
    assert ModelRegistry(root, "m").versions() == [plain, served]


BROKEN: dict[str, tuple[Callable[[Path], object], str]] = {
    "not JSON": (lambda d: optimized(d, "{nope"), "optimization.json: not valid JSON"),
    "a field missing": (
        lambda d: optimized(d, {k: v for k, v in report().items() if k != "reason"}),
        "optimization.json: reason: Field required",
    ),
    "selected not a row": (
        lambda d: optimized(d, report(selected="float16")),
        "selected 'float16' is not among the variants",
    ),
    "selected file gone": (
        lambda d: (optimized(d) / "int8.tflite").unlink(),
        "int8.tflite: the selected variant's model is missing",
    ),
    "selected file elsewhere": (
        lambda d: optimized(
            d, report(variants=[row("int8", "../candidate/model.tflite", 1, "uint8")])
        ),
        "names the file '../candidate/model.tflite', not a .tflite beside the report",
    ),
    "selected not eligible": (
        lambda d: optimized(
            d,
            report(
                variants=[
                    *report()["variants"][:1],
                    row("int8", "int8.tflite", 1, "uint8", eligible=False),
                ]
            ),
        ),
        "the selected variant 'int8' is not eligible",
    ),
    "no report": (lambda d: (d / "optimized").mkdir(), "optimization.json: not found"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_report_is_refused_before_anything_is_published(tmp_path: Path, case: str) -> None:
    model, metrics = candidate(tmp_path)
    make, message = BROKEN[case]
    make(tmp_path)
    with pytest.raises(InputError, match="re-run the optimize stage") as caught:
        register(model, metrics, str(tmp_path / "r"), PARAMS, tmp_path / "optimized")
    assert message in str(caught.value)
    assert not (tmp_path / "r").exists() or not ModelRegistry(tmp_path / "r", "m").versions()


def test_the_cli_says_which_variant_it_serves_or_what_is_wrong(tmp_path: Path) -> None:
    candidate(tmp_path)
    folder = optimized(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"registry": {"model_name": "m"}}))

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
    assert served.stdout.startswith("register: m version 1 serving the int8 variant promoted")
    (folder / "optimization.json").write_text("{nope")
    broken = cli("--optimized", "optimized")
    assert broken.returncode == 2
    lines = broken.stderr.strip().splitlines()
    assert len(lines) == 1 and "optimization.json: not valid JSON" in lines[0], broken.stderr
    assert "Traceback" not in broken.stderr
