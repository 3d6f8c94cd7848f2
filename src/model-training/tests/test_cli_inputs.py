"""The trainer CLI's first impression: bad inputs fail at once, clearly, without TensorFlow.

Each case runs `python -X importtime -m trainer ...` on a folder with one thing
wrong, and checks the one-line message (the file, what is wrong, what to do),
a non-zero exit, no traceback, no TensorFlow log line, and that TensorFlow was
never imported (from the interpreter's import log, not from a clock).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import write_params

from common.contracts import shard_name
from common.params import load_params
from trainer.quiet import NOISE, TF_LOG_LEVEL

PREPROCESS = {"image_size": 16, "color_mode": "grayscale", "resize": "stretch"}
STATS = {
    "dataset": "d",
    "data_hash": "ab" * 32,
    "labels": ["a", "b"],
    "preprocess": PREPROCESS,
    "counts": {"train": {"a": 4, "b": 4}, "val": {"a": 1, "b": 0}, "test": {"a": 0, "b": 1}},
}
TF_NOISE = ("I0000", "E0000", "W0000", "absl::InitializeLog", "cuInit", "oneDNN")


def _write(path: Path, content: object) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def make_processed(folder: Path) -> Path:
    """A processed-data folder that passes the checks (shards are never read)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "preprocess.json", PREPROCESS)
    _write(folder / "labels.json", ["a", "b"])
    _write(folder / "stats.json", STATS)
    for split in ("train", "val", "test"):
        (folder / shard_name(split, 0, 1)).write_bytes(b"")
    return folder


def make_candidate(folder: Path) -> Path:
    """A candidate folder that passes the checks (model files are never loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "preprocess.json", PREPROCESS)
    _write(folder / "labels.json", ["a", "b"])
    _write(folder / "lineage.json", {"data_hash": "ab" * 32})
    (folder / "model.keras").write_bytes(b"")
    (folder / "model.tflite").write_bytes(b"")
    return folder


def run_trainer(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "trainer", *args],
        cwd=cwd,
        env={**env, "MEGA_WANDB_MODE": "disabled", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str], stage: str, *parts: str) -> None:
    """Exit 2 (bad input) and one `<stage>: error:` line holding `parts`; no traceback, no
    TF noise, no TF import."""
    imports = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    message = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2, result
    assert len(message) == 1, message
    assert message[0].startswith(f"{stage}: error: "), message
    for part in parts:
        assert part in message[0], (part, message[0])
    output = result.stdout + "\n".join(message)
    assert "Traceback" not in output
    assert not [noise for noise in TF_NOISE if noise in output], output
    modules = {line.rsplit("|", 1)[-1].strip() for line in imports}
    assert imports and not {m for m in modules if m.split(".")[0] in ("tensorflow", "keras")}


Breaker = Callable[[Path], None]

TRAIN_CASES: dict[str, tuple[Breaker, tuple[str, ...]]] = {
    "missing folder": (lambda d: None, ("--data", "no such folder")),
    "no preprocess.json": (
        lambda d: (d / "preprocess.json").unlink(),
        ("preprocess.json: not found", "process stage"),
    ),
    "preprocess.json not JSON": (
        lambda d: _write(d / "preprocess.json", "{image_size: 16"),
        ("preprocess.json: not valid JSON", "process stage"),
    ),
    "preprocess.json lacks image_size": (
        lambda d: _write(d / "preprocess.json", {"color_mode": "rgb"}),
        ("preprocess.json: image_size: Field required", "process stage"),
    ),
    "labels.json not a list": (
        lambda d: _write(d / "labels.json", {"a": 0}),
        ("labels.json: expected a JSON list of class names", "process stage"),
    ),
    "stats.json lacks counts": (
        lambda d: _write(d / "stats.json", {k: v for k, v in STATS.items() if k != "counts"}),
        ("stats.json: counts: Field required", "process stage"),
    ),
    "no train examples": (
        lambda d: _write(d / "stats.json", {**STATS, "counts": {"train": {}, "test": {"a": 1}}}),
        ("stats.json: the train split has no examples", "process.split"),
    ),
    "no train shards": (
        lambda d: (d / shard_name("train", 0, 1)).unlink(),
        ("no train-*.tfrecord shards", "process stage"),
    ),
}


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_refuses_bad_data_before_tensorflow(case: str, tmp_path: Path) -> None:
    breaker, parts = TRAIN_CASES[case]
    data = tmp_path / "data"
    if case != "missing folder":
        breaker(make_processed(data))
    write_params(tmp_path)
    result = run_trainer(tmp_path, "train", "--data", str(data), "--out", "candidate")
    assert_clean_failure(result, "train", *parts)
    assert not (tmp_path / "candidate").exists()


def test_train_refuses_a_file_as_data(tmp_path: Path) -> None:
    write_params(tmp_path)
    (tmp_path / "data").write_text("")
    result = run_trainer(tmp_path, "train", "--data", "data", "--out", "candidate")
    assert_clean_failure(result, "train", "--data data: is a file, not a folder")


@pytest.mark.parametrize(
    ("out", "says"),
    [
        ("afile", "--out afile: is a file; pass a folder path"),
        ("afile/candidate", "--out afile/candidate: afile is a file, not a folder"),
    ],
)
def test_train_refuses_an_out_it_cannot_make(out: str, says: str, tmp_path: Path) -> None:
    make_processed(tmp_path / "data")
    write_params(tmp_path)
    (tmp_path / "afile").write_text("")
    result = run_trainer(tmp_path, "train", "--data", "data", "--out", out)
    assert_clean_failure(result, "train", says)


# Where evaluate and register are told to write, and cannot: (flag, value, message).
OUTPUT_CASES = {
    "evaluate --metrics is a folder": ("--metrics", "data", "--metrics data: is a folder"),
    "evaluate --details under a file": (
        "--details", "afile/e.json", "--details afile/e.json: afile is a file, not a folder",
    ),
    "evaluate --plots is a file": ("--plots", "afile", "--plots afile: is a file"),
    "register --registry under a file": (
        "--registry", "afile/models", "--registry afile/models: afile is a file, not a folder",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_evaluate_and_register_refuse_outputs_they_cannot_write(case: str, tmp_path: Path) -> None:
    flag, value, says = OUTPUT_CASES[case]
    make_candidate(tmp_path / "candidate")
    make_processed(tmp_path / "data")
    write_params(tmp_path)
    (tmp_path / "afile").write_text("")
    _write(tmp_path / "metrics.json", {"test": {"accuracy": 0.99, "macro_f1": 0.99}})
    if flag == "--registry":
        args = ["register", "--model", "candidate", "--metrics", "metrics.json", flag, value]
    else:
        outputs = {"--metrics": "m.json", "--details": "d.json", flag: value}
        args = ["evaluate", "--model", "candidate", "--data", "data"]
        args += [part for item in outputs.items() for part in item]
    result = run_trainer(tmp_path, *args)
    assert_clean_failure(result, args[0], says)


EVALUATE_CASES: dict[str, tuple[Breaker, Breaker, tuple[str, ...]]] = {
    "missing model folder": (
        lambda m: __import__("shutil").rmtree(m),
        lambda d: None,
        ("--model", "no such folder", "trainer train --out"),
    ),
    "no model.tflite": (
        lambda m: (m / "model.tflite").unlink(),
        lambda d: None,
        ("model.tflite: not found", "train stage"),
    ),
    "candidate labels.json not JSON": (
        lambda m: _write(m / "labels.json", "[a, b]"),
        lambda d: None,
        ("candidate/labels.json: not valid JSON", "train stage"),
    ),
    "no test shards": (
        lambda m: None,
        lambda d: (d / shard_name("test", 0, 1)).unlink(),
        ("no test-*.tfrecord shards", "process stage"),
    ),
}


@pytest.mark.parametrize("case", EVALUATE_CASES)
def test_evaluate_refuses_bad_inputs_before_tensorflow(case: str, tmp_path: Path) -> None:
    break_model, break_data, parts = EVALUATE_CASES[case]
    break_model(make_candidate(tmp_path / "candidate"))
    break_data(make_processed(tmp_path / "data"))
    result = run_trainer(
        tmp_path,
        "evaluate",
        "--model",
        "candidate",
        "--data",
        "data",
        "--metrics",
        "metrics.json",
        "--details",
        "details.json",
    )
    assert_clean_failure(result, "evaluate", *parts)
    assert not (tmp_path / "metrics.json").exists()


REGISTER_CASES: dict[str, tuple[object, tuple[str, ...]]] = {
    "metrics lacks test": ({"val": {"accuracy": 0.9}}, ("metrics.json: test: Field required",)),
    "metrics not JSON": ("{'test': 1}", ("metrics.json: not valid JSON",)),
    "accuracy not a number": (
        {"test": {"accuracy": "high"}},
        ("metrics.json: test.accuracy: Input should be a valid number",),
    ),
    "accuracy above 1": ({"test": {"accuracy": 98}}, ("test.accuracy", "less than or equal")),
    "macro F1 missing": (
        {"test": {"accuracy": 0.99}},
        ("metrics.json: test.macro_f1: Field required",),
    ),
    "metrics missing": (None, ("metrics.json: not found",)),
}


@pytest.mark.parametrize("case", REGISTER_CASES)
def test_register_names_the_bad_metrics_file(case: str, tmp_path: Path) -> None:
    content, parts = REGISTER_CASES[case]
    make_candidate(tmp_path / "candidate")
    if content is not None:
        _write(tmp_path / "metrics.json", content)
    write_params(tmp_path)
    result = run_trainer(
        tmp_path, "register", "--model", "candidate", "--metrics", "metrics.json", "--registry", "r"
    )
    assert_clean_failure(result, "register", *parts, "evaluate stage")
    assert not (tmp_path / "r").exists()


def test_register_names_a_bad_lineage_file(tmp_path: Path) -> None:
    candidate = make_candidate(tmp_path / "candidate")
    _write(candidate / "lineage.json", "")
    _write(tmp_path / "metrics.json", {"test": {"accuracy": 0.99, "macro_f1": 0.99}})
    write_params(tmp_path)
    result = run_trainer(
        tmp_path, "register", "--model", "candidate", "--metrics", "metrics.json", "--registry", "r"
    )
    assert_clean_failure(result, "register", "lineage.json: not valid JSON", "train stage")


@pytest.mark.parametrize(
    ("broken", "content", "problem"),
    [
        ("1/metrics.json", '{"test": {"accuracy": "high"}}', "test.accuracy: Input should be"),
        ("aliases.json", "garbage", "not valid JSON"),
        ("1/version.json", "{", "not valid JSON"),
        ("aliases.json", "[1]", "expected a JSON object"),
    ],
    ids=["production metrics.json", "aliases.json not JSON", "version.json", "aliases a list"],
)
def test_register_names_a_corrupt_registry_file(
    broken: str, content: str, problem: str, tmp_path: Path
) -> None:
    """A registry file register reads (the gate's production metrics, the aliases, a
    version's record) is broken: one line naming it, and a fix that is not `mega run`
    (the registry is not a DVC output)."""
    from common.registry import ModelRegistry

    make_candidate(tmp_path / "candidate")
    _write(tmp_path / "metrics.json", {"test": {"accuracy": 0.99, "macro_f1": 0.99}})
    write_params(tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    _write(old / "metrics.json", {"test": {"accuracy": 0.9, "macro_f1": 0.9}})
    name = load_params(tmp_path / "params.yaml").registry.model_name
    registry = ModelRegistry(tmp_path / "r", name)
    registry.set_alias("production", registry.publish(old))
    (tmp_path / "r" / name / broken).write_text(content)
    result = run_trainer(
        tmp_path, "register", "--model", "candidate", "--metrics", "metrics.json", "--registry", "r"
    )
    message = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 1, result.stderr
    assert len(message) == 1, message
    assert message[0].startswith(f"register: error: r/{name}/{broken}: {problem}"), message
    assert message[0].endswith("`mega run` does not rewrite it"), message


@pytest.mark.slow
def test_tensorflow_start_up_noise_is_kept_out(tmp_path: Path) -> None:
    """TensorFlow imported through the trainer's helper, then run: stderr stays empty."""
    code = (
        "from trainer.quiet import quiet_tensorflow_import\n"
        "quiet_tensorflow_import()\n"
        "import tensorflow as tf\n"
        "print(int(tf.constant(1) + 1))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert not [noise for noise in TF_NOISE if noise in result.stderr], result.stderr


GLOG = "00:00:1796041165.465953   28223"
DROPPED = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    f"I0000 {GLOG} port.cc:153] oneDNN custom operations are on.",
    f"I0000 {GLOG} cudart_stub.cc:31] Could not find cuda drivers on your machine.",
    f"W0000 {GLOG} gpu_device.cc:2342] Cannot dlopen some GPU libraries.",
    f"E0000 {GLOG} cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: (303)",
    f"E0000 {GLOG} cuda_dnn.cc:8310] Unable to register cuDNN factory: Attempting to register",
    f"E0000 {GLOG} computation_placer.cc:177] computation placer already registered.",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
)
KEPT = (
    f"E0000 {GLOG} bfc_allocator.cc:485] Allocator (mklcpu) ran out of memory trying to "
    "allocate 6.00GiB",
    f"E0000 {GLOG} op_kernel.cc:1840] OP_REQUIRES failed at conv_ops.cc:1068 : RESOURCE_EXHAUSTED",
    f"F0000 {GLOG} cpu_feature_guard.cc:43] The TensorFlow library was compiled to use AVX "
    "instructions, but these aren't available on your machine.",
    "Traceback (most recent call last):",
    "train: error: something the user must read",
)


def test_only_known_harmless_native_lines_are_noise() -> None:
    assert [line for line in DROPPED if not NOISE.match(line + "\n")] == []
    assert [line for line in KEPT if NOISE.match(line + "\n")] == []


def test_native_stderr_reaches_the_user_even_if_the_process_dies_at_once(tmp_path: Path) -> None:
    """Lines written to fd 2 just before a FATAL abort or the OOM killer are not lost."""
    lines = "".join(line + "\n" for line in (*DROPPED, *KEPT)).encode()
    code = (
        "import os, signal\n"
        "from trainer.quiet import filtered_native_stderr\n"
        "with filtered_native_stderr():\n"
        f"    os.write(2, {lines!r})\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == -9, result
    assert result.stderr.splitlines() == list(KEPT)


def test_runner_container_and_trainer_agree_on_the_tensorflow_log_level() -> None:
    """Level 2 everywhere: a higher level would hide TensorFlow's genuine ERROR lines."""
    root = Path(__file__).resolve().parents[3]
    sources = {
        "runner": (root / "src/workflow/workflow/runner.py").read_text(),
        "Dockerfile": (root / "src/Dockerfile").read_text(),
    }
    levels = {
        name: re.findall(r"TF_CPP_MIN_LOG_LEVEL\W+(\d)", text) for name, text in sources.items()
    }
    assert TF_LOG_LEVEL == "2"
    assert levels == {name: [TF_LOG_LEVEL] for name in sources}


def _optimize_args(**override: str) -> list[str]:
    flags = {
        "--model": "candidate",
        "--data": "data",
        "--out": "optimized",
        "--report": "reports/optimization.json",
        **override,
    }
    return ["optimize", *(part for item in flags.items() for part in item)]


# Each kind of bad input to optimize: a missing or incomplete candidate, data without
# the split it reads, an output it cannot write. (breaker of the folder, flag overrides,
# message parts)
OPTIMIZE_CASES: dict[str, tuple[Breaker, dict[str, str], tuple[str, ...]]] = {
    "missing model folder": (
        lambda t: None, {"--model": "nothere"}, ("--model", "no such folder"),
    ),
    "candidate without its SavedModel": (
        lambda t: None, {}, ("saved_model: not found", "train stage"),
    ),
    "candidate without model.tflite": (
        lambda t: (t / "candidate/model.tflite").unlink(), {}, ("model.tflite: not found",),
    ),
    "data without train shards": (
        lambda t: (t / "data" / shard_name("train", 0, 1)).unlink(),
        {},
        ("no train-*.tfrecord shards",),
    ),
    "data without a test split": (
        lambda t: _write(t / "data/stats.json", {**STATS, "counts": {"train": {"a": 4}}}),
        {},
        ("the test split has no examples",),
    ),
    "--report is a folder": (lambda t: None, {"--report": "data"}, ("--report data: is a folder",)),
    "--out under a file": (
        lambda t: None, {"--out": "afile/o"}, ("--out afile/o: afile is a file, not a folder",),
    ),
    "--report under a file": (
        lambda t: None,
        {"--report": "afile/r.json"},
        ("--report afile/r.json: afile is a file, not a folder",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", OPTIMIZE_CASES)
def test_optimize_refuses_bad_inputs_before_tensorflow(case: str, tmp_path: Path) -> None:
    breaker, override, parts = OPTIMIZE_CASES[case]
    make_candidate(tmp_path / "candidate")
    if case != "candidate without its SavedModel":
        (tmp_path / "candidate/saved_model").mkdir()
    make_processed(tmp_path / "data")
    write_params(tmp_path)
    (tmp_path / "afile").write_text("")
    breaker(tmp_path)
    result = run_trainer(tmp_path, *_optimize_args(**override))
    assert_clean_failure(result, "optimize", *parts)
    assert not (tmp_path / "optimized").exists()


def test_optimize_refuses_bad_params(tmp_path: Path) -> None:
    make_candidate(tmp_path / "candidate")
    (tmp_path / "candidate/saved_model").mkdir()
    make_processed(tmp_path / "data")
    write_params(tmp_path, {"optimize": {"max_accuracy_drop": 2}})
    result = run_trainer(tmp_path, *_optimize_args())
    assert_clean_failure(result, "optimize", "optimize.max_accuracy_drop")


# Each command that tracks a run in W&B, on inputs that pass its checks.
TRACKING_COMMANDS: dict[str, list[str]] = {
    "train": ["train", "--data", "data", "--out", "candidate-out"],
    "optimize": _optimize_args(),
    "register": ["register", "--model", "candidate", "--metrics", "metrics.json",
                 "--registry", "models", "--optimized", "optimized"],
}  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize("command", TRACKING_COMMANDS)
def test_tracking_commands_read_the_wandb_secret_first(command: str, tmp_path: Path) -> None:
    """With MEGA_WANDB_SECRET and no WANDB_API_KEY, each command that tracks asks Secret
    Manager for the key at start: before the W&B server check (which would fail on its
    closed port) and before TensorFlow. A missing secret is one line, exit 69."""
    from service_stubs import EXIT_UNAVAILABLE, SecretManagerStub
    from support import free_port

    make_candidate(tmp_path / "candidate")
    (tmp_path / "candidate/saved_model").mkdir()
    make_processed(tmp_path / "data")
    write_params(tmp_path, {"train": {"tracking": "wandb"}})
    stub = SecretManagerStub({})  # holds no secret
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_API_KEY", "MEGA_WANDB_MODE")}
    env.update(
        MEGA_WANDB_SECRET="wandb-api-key",
        MEGA_GCP_PROJECT="proj",
        MEGA_SECRET_MANAGER_ENDPOINT=stub.url,
        MEGA_WANDB_MODE="online",
        WANDB_BASE_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens
    )
    try:
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "trainer", *TRACKING_COMMANDS[command]],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        stub.close()
    assert stub.paths == ["/v1/projects/proj/secrets/wandb-api-key/versions/latest:access"]
    assert result.returncode == EXIT_UNAVAILABLE, result.stderr[-3000:]
    [line] = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert line.startswith(
        f"{command}: error: Secret Manager (projects/proj/secrets/wandb-api-key/versions/latest): "
        "no such secret or version; create it"
    ), line
    imported = {row.rsplit("|", 1)[-1].strip().split(".")[0] for row in result.stderr.splitlines()}
    assert not imported & {"tensorflow", "keras"}
