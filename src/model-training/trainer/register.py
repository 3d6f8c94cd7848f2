"""The evaluation gate: publish the candidate and decide which alias it earns."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from common import storage
from common.contracts import LINEAGE, METRICS
from common.params import RegistryParams
from common.registry import ModelRegistry

PRODUCTION = "production"
CANDIDATE = "candidate"


def model_card(name: str, metrics: dict[str, Any], lineage: dict[str, Any]) -> str:
    test = metrics.get("test", {})
    params = lineage.get("params", {})
    return "\n".join(
        [
            f"# Model card: {name}",
            "",
            f"- Model: `{params.get('train', {}).get('model', '?')}`, "
            f"trained {lineage.get('trained_at', '?')}",
            f"- Data: `{lineage.get('data', '?')}`, version `{lineage.get('data_hash', '?')[:12]}`",
            f"- Code: git `{lineage.get('git_sha', '?')}`"
            + (" (uncommitted changes)" if lineage.get("git_dirty") else ""),
            f"- W&B run: `{lineage.get('wandb_run_id') or 'not tracked'}`",
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
            "## Intended use",
            "",
            "Demonstration classifier of the Mega Pipeline template; "
            "inputs must resemble the training data (see preprocess.json).",
            "",
        ]
    )


def register(
    candidate: Path, metrics_path: str, registry_root: str, params: RegistryParams
) -> dict[str, Any]:
    """Publish `candidate` with its metrics; alias it `production` if it passes the gate."""
    metrics = storage.read_json(metrics_path)
    accuracy = float(metrics["test"]["accuracy"])
    lineage = storage.read_json(candidate / LINEAGE)
    registry = ModelRegistry(registry_root, params.model_name)
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        staging = Path(tmp) / "model"
        shutil.copytree(candidate, staging)
        storage.write_json(staging / METRICS, metrics)
        (staging / "model_card.md").write_text(model_card(params.model_name, metrics, lineage))
        version = registry.publish(staging, extra={"test_accuracy": accuracy})
    if accuracy >= params.min_accuracy:
        alias = PRODUCTION
        reason = f"test accuracy {accuracy:.4f} ≥ threshold {params.min_accuracy:.4f}"
    else:
        alias = CANDIDATE
        reason = (
            f"test accuracy {accuracy:.4f} < threshold {params.min_accuracy:.4f}; "
            "production is unchanged"
        )
    registry.set_alias(alias, version)
    return {
        "model": params.model_name,
        "version": version,
        "alias": alias,
        "promoted": alias == PRODUCTION,
        "reason": reason,
        "uri": registry.version_uri(version),
    }
