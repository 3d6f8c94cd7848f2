"""Model optimization on the default digits run: each variant against its own baseline.

Runs collect → process → train → optimize with the project's params.yaml (tracking
off) in a temporary folder, reads the stage's report and times its variants as register
does (trainer.selection.time_variants), so every figure comes from the same run,
measured in LiteRT on the test split. Prints:

- `int8_size`: the int8 `.tflite`'s bytes / float32's (acceptance: ≤ 0.3x);
- `int8_latency`: int8's p50 single-image latency / float32's (≤ 0.6x);
- `int8_accuracy_drop`: float32's test accuracy - int8's, in points (≤ 1);
- `student_params`: the distilled student's parameters / the candidate's (≤ 0.25x);
- `student_accuracy_drop`: float32's accuracy - the int8 student's, in points (≤ 1);
- `distill_gain`: the distilled student's accuracy - the same student trained from
  scratch for the same epochs, in points (both int8).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common.contracts import Optimization
from common.params import PipelineParams
from trainer.inputs import check_optimized
from trainer.selection import select, time_variants

ROOT = Path(__file__).resolve().parent.parent
STAGES = [
    ["collector", "--out", "data/raw/digits"],
    ["processor", "--raw", "data/raw/digits", "--out", "data/processed/digits"],
    ["trainer", "train", "--data", "data/processed/digits", "--out", "models/candidate"],
    [
        "trainer", "optimize", "--model", "models/candidate", "--data", "data/processed/digits",
        "--out", "models/optimized", "--report", "reports/optimization.json",
    ],
]  # fmt: skip


def run_pipeline(folder: Path) -> Optimization:
    """The stages on the digits, with the project's parameters but no W&B; the variants
    timed and the served one selected as register would."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = "digits"
    params["collect"] = {**params["collect"], "source": "digits", "uri": None}
    params["train"]["tracking"] = "none"
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MEGA_WANDB_MODE": "disabled", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for stage in STAGES:
        subprocess.run(
            [sys.executable, "-m", *stage], cwd=folder, env=env, check=True, capture_output=True
        )
    measured, images = check_optimized(folder / "models/optimized", folder / "models/candidate")
    timing = PipelineParams.model_validate(params).optimize
    return select(
        time_variants(measured, folder / "models/optimized", images, timing), timing.latency_tie
    )


def points(value: float) -> str:
    return f"{100 * value:+.2f} points"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-optimize-") as tmp:
        report = run_pipeline(Path(tmp))
    base, int8 = report.variant("float32"), report.variant("int8")
    student, scratch = report.variant("student_int8"), report.variant("scratch_student_int8")
    print(
        f"int8_size: {int8.bytes / base.bytes:.2f}x "
        f"(ours {int8.bytes:,} B vs baseline float32 {base.bytes:,} B)"
    )
    assert int8.latency_p50_ms and base.latency_p50_ms  # timed above
    print(
        f"int8_latency: {int8.latency_p50_ms / base.latency_p50_ms:.2f}x "
        f"(ours p50 {int8.latency_p50_ms:.4f} ms vs baseline float32 {base.latency_p50_ms:.4f} ms)"
    )
    print(
        f"int8_accuracy_drop: {points(base.accuracy - int8.accuracy)} "
        f"(ours {int8.accuracy:.4f} vs baseline float32 {base.accuracy:.4f})"
    )
    print(
        f"student_params: {student.parameters / base.parameters:.3f}x "
        f"(ours {student.parameters:,} vs baseline candidate {base.parameters:,})"
    )
    print(
        f"student_accuracy_drop: {points(base.accuracy - student.accuracy)} "
        f"(ours student_int8 {student.accuracy:.4f} vs baseline float32 {base.accuracy:.4f})"
    )
    print(
        f"distill_gain: {points(student.accuracy - scratch.accuracy)} "
        f"(ours distilled {student.accuracy:.4f} vs baseline scratch {scratch.accuracy:.4f})"
    )
    print(f"selected: {report.selected} ({report.reason})")


if __name__ == "__main__":
    main()
