"""The optimize stage: the selection rule, the report contract, and every variant in LiteRT."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from support import TinyPipeline, run_cli, write_params

from common.contracts import OPTIMIZATION, ContractError, Optimization, VariantScores
from trainer.selection import mark_eligible, select


def row(
    name: str, accuracy: float, p50: float | None, size: int, macro_f1: float | None = None
) -> VariantScores:
    """A variant row; timed (`p50` set) as register leaves it, or untimed as the stage does."""
    timings = {} if p50 is None else {
        "latency_p50_ms": p50, "latency_p95_ms": p50, "throughput_per_s": 1000.0
    }  # fmt: skip
    return VariantScores(
        name=name,  # type: ignore[arg-type]
        file=f"{name}.tflite",
        accuracy=accuracy,
        macro_f1=accuracy if macro_f1 is None else macro_f1,
        agreement=1.0,
        bytes=size,
        gzip_bytes=size,
        parameters=100,
        sparsity=0.0,
        input_dtype="float32",
        eligible=False,
        **timings,  # type: ignore[arg-type]
    )


def chosen(
    rows: list[VariantScores], drop: float = 0.01, min_f1: float = 0.5, tie: float = 0.0
) -> Optimization:
    """The rule end to end: the stage marks the eligible rows, register selects."""
    return select(mark_eligible(rows, drop, min_f1), tie)


def test_the_fastest_variant_within_the_drop_is_selected() -> None:
    rows = [row("float32", 0.95, 0.05, 600), row("dynamic", 0.945, 0.02, 160)]
    rows.append(row("int8", 0.93, 0.01, 150))  # fastest, but 2 points down
    report = chosen(rows)
    assert report.selected == "dynamic"
    assert [r.eligible for r in report.variants] == [True, True, False]
    assert "dynamic 0.9450" in str(report.reason) and "0.9500" in str(report.reason)


def test_nothing_qualifies_serves_float32() -> None:
    # float32 itself misses the macro-F1 floor, the rest are too far down.
    rows = [row("float32", 0.9, 0.05, 600, macro_f1=0.4), row("int8", 0.7, 0.01, 150)]
    report = chosen(rows)
    assert report.selected == "float32"
    assert not any(r.eligible for r in report.variants)
    assert "serving float32" in str(report.reason)


def test_the_macro_f1_floor_excludes_a_fast_variant() -> None:
    rows = [row("float32", 0.95, 0.05, 600), row("int8", 0.95, 0.01, 150, macro_f1=0.6)]
    report = chosen(rows, min_f1=0.85)
    assert report.selected == "float32"
    assert not report.variant("int8").eligible


def test_a_tie_in_latency_goes_to_the_smaller_file() -> None:
    rows = [row("float32", 0.95, 0.05, 600), row("dynamic", 0.95, 0.01, 160)]
    rows.append(row("int8", 0.95, 0.01, 150))
    assert chosen(rows).selected == "int8"
    rows[2] = row("int8", 0.95, 0.01, 170)
    assert chosen(rows).selected == "dynamic"


def test_latencies_within_the_tie_margin_go_to_the_smallest_file() -> None:
    # 5 % apart: timing noise, not a difference; the smaller file is served.
    rows = [row("float32", 0.95, 0.05, 600), row("dynamic", 0.95, 0.0100, 160)]
    rows.append(row("int8", 0.95, 0.0105, 150))
    report = chosen(rows, tie=0.1)
    assert report.selected == "int8"
    assert "the smallest of 2 within 10 % of the fastest: int8" in str(report.reason)
    # 20 % apart is a difference: the faster one is served.
    rows[2] = row("int8", 0.95, 0.012, 150)
    assert chosen(rows, tie=0.1).selected == "dynamic"
    # A smaller file that is fast but not eligible is never in the tie.
    rows[2] = row("int8", 0.90, 0.0101, 150)
    assert chosen(rows, tie=0.1).selected == "dynamic"


def test_a_drop_exactly_at_the_limit_is_allowed() -> None:
    # 0.97 - 0.96 is 0.010000000000000009 in floating point.
    rows = [row("float32", 0.97, 0.05, 600), row("int8", 0.96, 0.01, 150)]
    assert chosen(rows).selected == "int8"


def test_the_scratch_student_is_never_selected() -> None:
    rows = [row("float32", 0.95, 0.05, 600), row("scratch_student_int8", 0.95, 0.001, 10)]
    report = chosen(rows)
    assert report.selected == "float32"
    assert not report.variant("scratch_student_int8").eligible


def test_eligibility_needs_the_float32_row() -> None:
    with pytest.raises(ValueError, match="float32 baseline"):
        mark_eligible([row("int8", 0.95, 0.01, 150)], 0.01, 0.5)


def stage_report() -> Optimization:
    """What the optimize stage writes: eligibility marked, no timings."""
    return mark_eligible([row("float32", 0.95, None, 600), row("int8", 0.95, None, 150)], 0.01, 0.5)


def test_selection_needs_timings() -> None:
    with pytest.raises(ValueError, match="every eligible variant timed"):
        select(stage_report())


def test_the_stage_report_has_no_timings_and_no_selection(tmp_path: Path) -> None:
    report = stage_report()
    report.write(tmp_path / OPTIMIZATION)
    assert Optimization.read(tmp_path / OPTIMIZATION) == report
    document = json.loads((tmp_path / OPTIMIZATION).read_text())
    assert set(document) == {"baseline", "max_accuracy_drop", "variants"}
    assert not {"latency_p50_ms", "latency_p95_ms", "throughput_per_s"} & set(
        document["variants"][0]
    )


def test_the_timed_report_round_trips(tmp_path: Path) -> None:
    report = chosen([row("float32", 0.95, 0.05, 600), row("int8", 0.95, 0.01, 150)])
    report.write(tmp_path / OPTIMIZATION)
    assert Optimization.read(tmp_path / OPTIMIZATION) == report
    document = json.loads((tmp_path / OPTIMIZATION).read_text())
    assert document["baseline"] == "float32" and document["selected"] == "int8"
    assert set(document["variants"][0]) >= {"name", "file", "bytes", "latency_p50_ms", "eligible"}


def test_a_report_selecting_a_missing_row_is_refused(tmp_path: Path) -> None:
    report = chosen([row("float32", 0.95, 0.05, 600)]).document()
    (tmp_path / OPTIMIZATION).write_text(json.dumps({**report, "selected": "int8"}))
    with pytest.raises(ContractError, match="selected 'int8' is not among the variants"):
        Optimization.read(tmp_path / OPTIMIZATION)


@pytest.fixture(scope="module")
def optimized(tiny_pipeline: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`trainer optimize` on the tiny data, into a folder of its own, for a candidate
    trained to convergence: the shared tiny candidate (6 epochs) is still learning, and
    a fine-tuned or distilled model would then differ from it by learning more."""
    root = tmp_path_factory.mktemp("optimize")
    # distill.epochs null: the student trains as long as the candidate (the tiny params'
    # two epochs leave it far from the teacher)
    compress = {"pruning": {"epochs": 6}, "distill": {"epochs": None}}
    write_params(root, {"train": {"epochs": 20}, "optimize": compress})
    env = {"MEGA_WANDB_MODE": "disabled"}
    data = str(tiny_pipeline.processed)
    run_cli(
        [sys.executable, "-m", "trainer", "train", "--data", data, "--out", "models/candidate"],
        root,
        env,
    )
    result = run_cli(
        [
            sys.executable, "-m", "trainer", "optimize",
            "--model", "models/candidate",
            "--data", data,
            "--out", "models/optimized",
            "--report", "reports/optimization.json",
        ],
        root,
        env,
    )  # fmt: skip
    (root / "stdout.txt").write_text(result.stdout)
    (root / "stderr.txt").write_text(result.stderr)
    return root


def test_the_stage_ends_with_its_summary_and_has_no_converter_noise(optimized: Path) -> None:
    report = Optimization.read(optimized / "reports/optimization.json")
    # Before it: the pruning and distillation epochs, as `trainer train` prints its own.
    line = (optimized / "stdout.txt").read_text().splitlines()[-1]
    eligible = ", ".join(row.name for row in report.variants if row.eligible)
    assert line.startswith("optimize: 7 variants measured in LiteRT; eligible to serve: ")
    assert f"eligible to serve: {eligible};" in line
    assert (optimized / "stderr.txt").read_text() == ""


def test_every_variant_loads_in_litert_and_agrees_with_float32(
    optimized: Path, tiny_pipeline: TinyPipeline
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from trainer.inputs import RERUN_TRAIN, read_preprocess
    from trainer.litert import to_input
    from trainer.optimize import load_split

    report = Optimization.read(optimized / "reports/optimization.json")
    assert report == Optimization.read(optimized / "models/optimized" / OPTIMIZATION)
    assert [r.name for r in report.variants] == [
        "float32", "float16", "dynamic", "int8", "pruned_int8", "student_int8",
        "scratch_student_int8",
    ]  # fmt: skip
    for name in ("int8", "pruned_int8", "student_int8", "scratch_student_int8"):
        assert report.variant(name).input_dtype == "uint8"
    assert not report.variant("scratch_student_int8").eligible
    spec = read_preprocess(str(optimized / "models/candidate"), RERUN_TRAIN)
    test = load_split(str(tiny_pipeline.processed), "test", spec)
    predictions = {}
    for variant in report.variants:
        interpreter = Interpreter(model_path=str(optimized / "models/optimized" / variant.file))
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        found = []
        for image in test.images:
            interpreter.set_tensor(inp["index"], to_input(image[np.newaxis], inp))
            interpreter.invoke()
            found.append(int(interpreter.get_tensor(out["index"])[0].argmax()))
        predictions[variant.name] = np.array(found)
        assert variant.bytes == (optimized / "models/optimized" / variant.file).stat().st_size
    for name, found in predictions.items():
        agreement = float((found == predictions["float32"]).mean())
        assert agreement >= 0.95, (name, agreement)
        # The report's own agreement is the same measurement (batched there).
        assert report.variant(name).agreement == pytest.approx(agreement, abs=1 / len(found))


def test_the_stage_writes_the_table(optimized: Path) -> None:
    report = Optimization.read(optimized / "reports/optimization.json")
    markdown = (optimized / "reports/optimization.md").read_text()
    assert all(f"| {r.name} |" in markdown for r in report.variants)
    assert "Register times every variant" in markdown and "p50" not in markdown
    sizes = {r.name: r.bytes for r in report.variants}
    assert sizes["int8"] < 0.5 * sizes["float32"] and sizes["float16"] < 0.6 * sizes["float32"]
    # The pruned variant's zeros show in the gzipped size, the student's in its parameters.
    pruned, int8 = report.variant("pruned_int8"), report.variant("int8")
    assert pruned.sparsity == pytest.approx(0.5, abs=0.01) and int8.sparsity == 0.0
    assert pruned.gzip_bytes < int8.gzip_bytes
    assert report.variant("student_int8").parameters < 0.25 * int8.parameters


def _optimize(root: Path, tiny_pipeline: TinyPipeline, tracking: str) -> dict[str, bytes]:
    """`trainer optimize` of the shared tiny candidate in `root` (one epoch each for the
    pruned and distilled models); the bytes of every output DVC records in dvc.lock."""
    compress = {"pruning": {"epochs": 1}, "distill": {"epochs": 1}}
    root.mkdir()
    write_params(root, {"train": {"tracking": tracking}, "optimize": compress})
    run_cli(
        [
            sys.executable, "-m", "trainer", "optimize",
            "--model", str(tiny_pipeline.candidate),
            "--data", str(tiny_pipeline.processed),
            "--out", "optimized", "--report", "reports/optimization.json",
        ],
        root,
        env={"MEGA_WANDB_MODE": "offline", "MEGA_WANDB_DIR": "runs", "WANDB_API_KEY": ""},
    )  # fmt: skip
    outputs = [*sorted((root / "optimized").iterdir()), *sorted((root / "reports").iterdir())]
    return {str(path.relative_to(root)): path.read_bytes() for path in outputs}


def test_the_outputs_are_the_same_on_every_run_and_the_table_goes_to_wandb(
    tiny_pipeline: TinyPipeline, tmp_path: Path
) -> None:
    # dvc.lock records a hash of each output: a timing in any of them (as the stage once
    # wrote) changed dvc.lock on every run. Tracking is a parameter outside the outputs.
    tracked = _optimize(tmp_path / "tracked", tiny_pipeline, "wandb")
    plain = _optimize(tmp_path / "plain", tiny_pipeline, "none")
    assert sorted(tracked) == [
        "optimized/dynamic.tflite", "optimized/float16.tflite", "optimized/float32.tflite",
        "optimized/int8.tflite", "optimized/labels.json", "optimized/optimization.json",
        "optimized/pruned_int8.tflite", "optimized/scratch_student_int8.tflite",
        "optimized/student_int8.tflite", "optimized/timing_images.npy",
        "reports/optimization.json", "reports/optimization.md",
    ]  # fmt: skip
    assert tracked == plain
    [table_file] = (tmp_path / "tracked" / "runs").rglob("optimization_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"][:3] == ["variant", "accuracy", "macro F1"]
    assert [line[0] for line in table["data"]] == [
        "float32", "float16", "dynamic", "int8", "pruned_int8", "student_int8",
        "scratch_student_int8",
    ]  # fmt: skip
