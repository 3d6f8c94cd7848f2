"""What the Python images install: the same pins as `make setup` (requirements/lock.txt),
and for the model-training image's GPU variant (`--build-arg ACCELERATOR=gpu`) its own
lock, its install branch in src/Dockerfile, and the check that rejects other values.

No image is built here: the Dockerfile's shell lines run under `sh` with a `uv` that only
records its arguments, and those arguments are then resolved by uv (a dry run, package
metadata only) for the image's platform; the GPU lock is re-resolved with the Makefile's
own command.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from dockerfiles import dockerfile_stages
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support import BIN, REPO, lock_pins

DOCKERFILE = REPO / "src/Dockerfile"
CPU_LOCK = REPO / "requirements/lock.txt"
GPU_LOCK = REPO / "requirements/lock-gpu.txt"
PYTHON_CONTAINERS = ["data-collector", "data-processor", "model-training", "api-service"]


def cuda_packages() -> set[str]:
    """What TensorFlow's `and-cuda` extra requires (names), from the installed metadata."""
    wanted: set[str] = set()
    for text in metadata.requires("tensorflow") or []:
        marker = Requirement(text).marker
        # Required with the extra and not without it: the extra's own packages.
        if marker and marker.evaluate({"extra": "and-cuda"}) and not marker.evaluate({"extra": ""}):
            wanted.add(canonicalize_name(Requirement(text).name))
    return wanted


def base_stage() -> list[str]:
    """The instructions of src/Dockerfile's shared stage (the one no container is named)."""
    [base] = [
        lines
        for name, lines in dockerfile_stages(DOCKERFILE).items()
        if name not in PYTHON_CONTAINERS
    ]
    return base


def run_line(instruction: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """Run a shell-form RUN instruction as the build does (`/bin/sh -c`, ARGs in the
    environment), with a `uv` on the PATH that writes its arguments to cwd/uv-args."""
    bin_dir = cwd / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake_uv = bin_dir / "uv"
    fake_uv.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$UV_ARGS_FILE"\n')
    fake_uv.chmod(0o755)
    environment = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "UV_ARGS_FILE": str(cwd / "uv-args"),
        **env,
    }
    command = instruction.removeprefix("RUN ")
    return subprocess.run(
        ["/bin/sh", "-c", command], cwd=cwd, env=environment, capture_output=True, text=True
    )


def accelerator_default() -> str:
    [line] = [line for line in base_stage() if line.startswith("ARG ACCELERATOR")]
    return line.partition("=")[2]


def check_line() -> str:
    """The RUN that checks the build arguments (it installs nothing)."""
    [line] = [
        line
        for line in base_stage()
        if line.startswith("RUN ") and "ACCELERATOR" in line and "install" not in line
    ]
    return line


def install_line() -> tuple[int, str]:
    """The dependency install: its index in the shared stage and its text."""
    [found] = [
        (index, line)
        for index, line in enumerate(base_stage())
        if line.startswith("RUN ") and "--constraint" in line
    ]
    return found


def installed_args(accelerator: str, package: str, tmp_path: Path) -> list[str]:
    """The arguments the dependency RUN passes to uv for these build arguments."""
    _, line = install_line()
    env = {"ACCELERATOR": accelerator, "PACKAGE": package}
    result = run_line(line, env, tmp_path)
    assert result.returncode == 0, result.stderr
    return (tmp_path / "uv-args").read_text().splitlines()


def compile_commands(target: str, *variables: str) -> list[list[str]]:
    """The `uv pip compile` commands `make -n target` would run, each as arguments."""
    plan = subprocess.run(
        ["make", "-n", target, *variables], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")  # a recipe line continued with a backslash is one command
    return [shlex.split(line) for line in plan.splitlines() if "pip compile" in line]


def option(args: list[str], name: str) -> list[str]:
    """Every value given to `name` in args (`--name value`)."""
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == name]


# --- the locks ---------------------------------------------------------------------------


def test_cpu_lock_has_no_cuda_packages() -> None:
    """`make setup` and every CPU image stay free of the CUDA wheels (gigabytes)."""
    assert not [name for name in lock_pins(CPU_LOCK) if name.startswith("nvidia-")]


def test_gpu_lock_agrees_with_the_cpu_lock_and_adds_the_cuda_packages() -> None:
    cpu, gpu = lock_pins(CPU_LOCK), lock_pins(GPU_LOCK)
    differing = {
        name: (cpu[name], gpu[name]) for name in cpu.keys() & gpu if cpu[name] != gpu[name]
    }
    assert not differing, f"pinned differently (cpu, gpu): {differing}; run `make lock`"
    assert gpu["tensorflow"] == cpu["tensorflow"]
    wanted = cuda_packages()
    assert wanted, "TensorFlow's metadata names no `and-cuda` packages"
    assert wanted <= gpu.keys(), f"missing from the GPU lock: {wanted - gpu.keys()}"
    # Only NVIDIA's CUDA wheels are new; everything else is the training image's CPU set.
    added = gpu.keys() - cpu.keys()
    assert added and all(name.startswith("nvidia-") for name in added), added


def test_gpu_lock_records_no_index_address_and_no_local_package() -> None:
    text = GPU_LOCK.read_text()
    assert "--index-url" not in text and "--extra-index-url" not in text
    assert "://" not in text
    local = {
        canonicalize_name(name)
        for name in (REPO / "requirements/local-packages.txt").read_text().split()
        if not name.startswith("#")
    }
    assert not local & lock_pins(GPU_LOCK).keys()
    assert "make lock" in text.splitlines()[1], "the header names the command that writes it"


def test_make_lock_writes_the_gpu_lock_from_the_gpu_image_inputs(tmp_path: Path) -> None:
    """`make lock` writes both locks; the GPU one is resolved for the image's platform from
    exactly the files the Dockerfile's GPU branch installs, constrained by the CPU lock."""
    outputs = [option(args, "-o") for args in compile_commands("lock")]
    assert outputs == [["requirements/lock.txt"], ["requirements/lock-gpu.txt"]], outputs
    # The overrides (overrides.txt) bind both locks, `make setup` and the images alike.
    assert [option(args, "--override") for args in compile_commands("lock")] == [
        ["requirements/overrides.txt"]
    ] * 2
    [args] = compile_commands("lock-gpu")
    assert option(args, "--constraint") == ["requirements/lock.txt"]
    assert option(args, "--python-version") == ["3.11"]
    assert option(args, "--python-platform")[0].startswith("x86_64-")
    assert option(args, "--excludes") == ["requirements/local-packages.txt"]
    assert "--no-emit-index-url" in args
    gpu = installed_args("gpu", "model-training", tmp_path)
    compiled = [arg for arg in args if arg.endswith((".toml", ".in"))]
    assert compiled == option(gpu, "-r")


def test_gpu_dependency_set_resolves_to_the_committed_lock(tmp_path: Path) -> None:
    """Re-resolve the GPU inputs against the CPU lock with the Makefile's command. It reads
    the package index's metadata, no wheel: about a second here, cold cache or warm. The
    committed pins are preferred, so the result is the committed lock unless an input
    changed since `make lock`."""
    if shutil.which("make") is None:
        pytest.fail("make is needed: it runs the GPU lock's command")
    output = tmp_path / "lock-gpu.txt"
    shutil.copyfile(GPU_LOCK, output)
    result = subprocess.run(
        ["make", "-s", "lock-gpu", f"GPU_LOCK={output}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert lock_pins(output) == lock_pins(GPU_LOCK), (
        "requirements/lock-gpu.txt is stale: run `make lock`"
    )


def dry_run(accelerator: str, package: str, tmp_path: Path) -> dict[str, str]:
    """What the Dockerfile's dependency install (its own uv arguments, recorded) would put
    into an empty Python 3.11 on the image's platform: canonical name → version."""
    args = installed_args(accelerator, package, tmp_path)
    assert args[:2] == ["pip", "install"], args
    venv = tmp_path / "venv"
    uv = str(BIN / "uv")
    subprocess.run([uv, "venv", "-q", "--python", str(BIN / "python"), str(venv)], check=True)
    target = ["--python", str(venv / "bin/python"), "--python-platform", "x86_64-manylinux_2_28"]
    result = subprocess.run(
        [uv, "pip", "install", "--dry-run", *target, *args[2:]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    would = (line.removeprefix(" + ") for line in result.stderr.splitlines())
    return {
        canonicalize_name(name): version
        for name, sep, version in (line.partition("==") for line in would)
        if sep and not name.startswith(" ")
    }


@pytest.mark.parametrize("package", PYTHON_CONTAINERS)
def test_cpu_images_install_only_what_make_setup_installs(package: str, tmp_path: Path) -> None:
    """Every package an image would install has the pin `make setup` installs (lock.txt)."""
    would = dry_run("cpu", package, tmp_path)
    cpu = lock_pins(CPU_LOCK)
    assert would, "the dry run lists what it would install"
    assert not would.keys() - cpu.keys(), f"not in the lock: {would.keys() - cpu.keys()}"
    assert {name: cpu[name] for name in would} == would


def test_gpu_image_installs_exactly_the_gpu_lock(tmp_path: Path) -> None:
    """The GPU branch installs nothing more or less than lock-gpu.txt pins."""
    assert dry_run("gpu", "model-training", tmp_path) == lock_pins(GPU_LOCK)


# --- the Dockerfile ----------------------------------------------------------------------


def test_cpu_is_the_default_and_installs_from_the_cpu_lock(tmp_path: Path) -> None:
    assert accelerator_default() == "cpu"
    for package in PYTHON_CONTAINERS:
        args = installed_args("cpu", package, tmp_path)
        assert args == [
            "pip",
            "install",
            "--constraint",
            "requirements/lock.txt",
            "--excludes",
            "requirements/local-packages.txt",
            "--override",
            "requirements/overrides.txt",
            "-r",
            "src/common/pyproject.toml",
            "-r",
            f"src/{package}/pyproject.toml",
        ]


def test_gpu_branch_installs_from_the_gpu_lock_like_the_cpu_branch(tmp_path: Path) -> None:
    cpu = installed_args("cpu", "model-training", tmp_path)
    gpu = installed_args("gpu", "model-training", tmp_path)
    same_form = [
        "requirements/lock-gpu.txt" if arg == "requirements/lock.txt" else arg for arg in cpu
    ]
    assert gpu == [*same_form, "-r", "requirements/gpu.in"]
    extra = [
        Requirement(line)
        for line in (REPO / "requirements/gpu.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(r.name, r.extras, str(r.specifier)) for r in extra] == [
        ("tensorflow", {"and-cuda"}, "")
    ], "the version comes from the lock, the extra from here"


def test_gpu_dependencies_come_before_the_code_and_from_copied_files(tmp_path: Path) -> None:
    """A code edit must not reinstall TensorFlow, and every file uv reads is in the layer."""
    base = base_stage()
    index, _ = install_line()
    copies = [line for line in base[:index] if line.startswith("COPY ")]
    code = [
        i for i, line in enumerate(base) if line.startswith("COPY src/") and ".toml" not in line
    ]
    assert code and index < min(code), base
    copied = {source for line in copies for source in line.split()[1:-1]}
    gpu = installed_args("gpu", "model-training", tmp_path)
    read = {*option(gpu, "--constraint"), *option(gpu, "--excludes"), *option(gpu, "-r")}
    expanded = {path.replace("model-training", "${PACKAGE}") for path in read}
    assert expanded <= copied, f"read but not copied before the install: {expanded - copied}"


@pytest.mark.parametrize(
    ("accelerator", "package", "says"),
    [
        ("tpu", "model-training", "ACCELERATOR=cpu or gpu"),
        ("GPU", "model-training", "ACCELERATOR=cpu or gpu"),
        ("gpus", "model-training", "ACCELERATOR=cpu or gpu"),
        ("cpu,gpu", "data-collector", "ACCELERATOR=cpu or gpu"),
        ("", "model-training", "ACCELERATOR=cpu or gpu"),
        ("cuda", "api-service", "ACCELERATOR=cpu or gpu"),
        ("gpu", "api-service", "model-training image only"),
        ("gpu", "data-processor", "model-training image only"),
    ],
)
def test_a_wrong_accelerator_fails_the_build_at_once(
    accelerator: str, package: str, says: str, tmp_path: Path
) -> None:
    result = run_line(check_line(), {"ACCELERATOR": accelerator, "PACKAGE": package}, tmp_path)
    assert result.returncode != 0
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # It runs before anything is copied or installed, so it fails within seconds.
    base = base_stage()
    assert base.index(check_line()) < min(
        i for i, line in enumerate(base) if line.startswith("COPY ")
    )


@pytest.mark.parametrize(
    ("accelerator", "package"),
    [*(("cpu", package) for package in PYTHON_CONTAINERS), ("gpu", "model-training")],
)
def test_the_allowed_accelerators_pass_the_check(
    accelerator: str, package: str, tmp_path: Path
) -> None:
    result = run_line(check_line(), {"ACCELERATOR": accelerator, "PACKAGE": package}, tmp_path)
    assert result.returncode == 0 and not result.stderr, result.stderr


def test_make_setup_installs_with_the_overrides_the_locks_were_compiled_with() -> None:
    """Without them uv would refuse the lock kfp's own bounds conflict with."""
    plan = subprocess.run(
        ["make", "-n", "-B", "setup"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.replace("\\\n", " ")
    [install] = [shlex.split(line) for line in plan.splitlines() if "uv pip install" in line]
    assert option(install, "--override") == ["requirements/overrides.txt"]
    assert option(install, "-c") == ["requirements/lock.txt"]


def test_overrides_lift_only_kfp_s_bounds() -> None:
    """uv's --override replaces every package's bound on protobuf and requests: each
    package in the environment but kfp's own must still accept the locked versions."""
    overridden = {
        canonicalize_name(Requirement(line).name)
        for line in (REPO / "requirements/overrides.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    pins = lock_pins(CPU_LOCK)
    refused = []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name.startswith("kfp"):
            continue  # the bounds the overrides exist to lift
        for text in dist.requires or []:
            requirement = Requirement(text)
            wanted = canonicalize_name(requirement.name)
            applies = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
            if wanted not in overridden or not applies:
                continue
            if not requirement.specifier.contains(pins[wanted], prereleases=True):
                refused.append(f"{name} wants {requirement}, the lock has {pins[wanted]}")
    assert not refused, refused
