"""The mega pipeline as a Kubeflow Pipelines (kfp v2) pipeline, for Vertex AI Pipelines.

collect → process → train → evaluate → gate → optimize → register, each step the
stage's container running the command dvc.yaml's stage runs (`workflow.stages`): the
commands are read from dvc.yaml when the pipeline is compiled, and each local path in
them (`--data data/processed/digits`) becomes the GCS URI of the kfp artifact that holds
it (`--data gs://…/process-…/processed`). The CLIs read and write gs:// themselves, so
no step needs a mounted file system. What the cloud adds to a command, and nothing
else: `--params` (params.yaml staged on GCS), evaluate's two numbers for the gate, and
register's registry root and Vertex AI Model Registry image.

The gate is two `dsl.If`s on evaluate's outputs: test accuracy ≥ registry.min_accuracy
and test macro F1 ≥ registry.min_macro_f1 (the class-balance floor), both values
compiled in from params.yaml. A candidate below
either is neither optimized nor registered; register's own gate then decides
`production` or `candidate` against the production model, as locally.

Caching: a step's cache key (Vertex AI's) is its command, image and inputs. Each
step reads params.yaml staged as `<params_root>/<stage>-<digest>.yaml`, the digest
covering only the params dvc.yaml declares for the stage, so with the same images a
step re-runs when DVC would re-run the stage: its params or its inputs changed. A new
commit is a new image tag, so every step runs; register is never cached (publishing is
not a result to reuse).
"""

# No `from __future__ import annotations`: kfp reads the components' annotations as types.
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.params import RegistryParams, VertexParams
from workflow.stages import Stage, StageDefinitionError

PIPELINE_NAME = "mega-pipeline"
# The stages, in order, that the pipeline runs; each is a dvc.yaml stage.
STAGES = ("collect", "process", "train", "evaluate", "optimize", "register")
# Memory per vCPU (GB) of the machine families a pipeline step can ask for by CPU and
# memory limits (Vertex AI picks the machine from them; Compute Engine's figures).
MEMORY_PER_CPU = {
    "n1-standard": 3.75,
    "n1-highmem": 6.5,
    "n1-highcpu": 0.9,
    "n2-standard": 4.0,
    "n2-highmem": 8.0,
    "n2-highcpu": 1.0,
    "e2-standard": 4.0,
    "e2-highmem": 8.0,
    "e2-highcpu": 1.0,
}
# The vCPU counts Compute Engine's predefined machine types come in.
MACHINE_CPUS = (1, 2, 4, 8, 16, 32, 48, 64, 80, 96, 128)
_MACHINE = re.compile(r"(?P<family>[a-z0-9]+-[a-z]+)-(?P<cpus>\d+)")
# The API's routes and port, given to the Vertex AI Model Registry with its image.
SERVING_IMAGE_FLAG = "--vertex-serving-image"


@dataclass(frozen=True)
class PipelinePlan:
    """Everything the compiled pipeline depends on besides its run-time parameters."""

    stages: Mapping[str, Stage]  # dvc.yaml's, `${dataset}` filled in
    images: Mapping[str, str]  # stage → the image URI its step runs
    env: Mapping[str, str]  # every step's environment: names and modes, never a secret
    digests: Mapping[str, str]  # stage → params digest (`workflow.stages.params_digest`)
    vertex: VertexParams
    registry: RegistryParams
    serving_image: str  # the API image the Vertex AI Model Registry records
    params_root: str  # defaults of the pipeline's parameters
    models_root: str
    caching: bool = True  # off: every step runs again (`mega run --on vertex --force`)


def machine_resources(vertex: VertexParams) -> tuple[str, str]:
    """`vertex.machine_type` as a step's CPU and memory limits, e.g. ("4", "15000M").

    Raises:
        StageDefinitionError: a machine type of another family (its limits are unknown).
    """
    match = _MACHINE.fullmatch(vertex.machine_type)
    if match is None or match["family"] not in MEMORY_PER_CPU:
        raise StageDefinitionError(
            f"params.yaml vertex.machine_type {vertex.machine_type!r}: a pipeline step asks "
            f"for CPUs and memory, known for {', '.join(MEMORY_PER_CPU)} machines; use one "
            "of those (e.g. n1-standard-4), or `mega train --on vertex` for another"
        )
    cpus = int(match["cpus"])
    if cpus not in MACHINE_CPUS:
        raise StageDefinitionError(
            f"params.yaml vertex.machine_type {vertex.machine_type!r}: no machine has {cpus} "
            f"vCPUs; use one with {', '.join(map(str, MACHINE_CPUS))} (e.g. n1-standard-4)"
        )
    # In whole megabytes: kfp takes integers only (n1-standard-2 has 7.5 GB).
    return str(cpus), f"{round(cpus * MEMORY_PER_CPU[match['family']] * 1000)}M"


def stage_args(
    stage: Stage, artifacts: Mapping[str, str], extra: list[str] | None = None
) -> list[str]:
    """The stage's arguments (after `python -m <module>`) with the value of each option
    `artifacts` names replaced by its artifact placeholder, then `extra`.

    Raises:
        StageDefinitionError: an option's value is one of the stage's paths but has no
            artifact here, or an artifact's option is not in the stage's command.
    """
    args, used = [], set()
    words = stage.args
    for index, word in enumerate(words):
        option = words[index - 1] if index else ""
        if option in artifacts and not word.startswith("--"):
            used.add(option)
            word = artifacts[option]
        elif option.startswith("--") and stage.is_path(word):
            raise StageDefinitionError(
                f"dvc.yaml stage {stage.name}: {option} {word} is a path the pipeline does "
                "not carry; give it an artifact in workflow/pipeline.py"
            )
        args.append(word)
    if unused := sorted(set(artifacts) - used):
        raise StageDefinitionError(
            f"dvc.yaml stage {stage.name}: its cmd has no path option {', '.join(unused)}; "
            "the pipeline's artifacts for it in workflow/pipeline.py must match the cmd"
        )
    return [*args, *(extra or [])]


def _params_arg(plan: PipelinePlan, stage: str, params_root: Any) -> list[str]:
    """`--params <root>/<stage>-<digest>.yaml` for a stage that declares params."""
    if not plan.stages[stage].params:
        return []
    return ["--params", f"{params_root}/{stage}-{plan.digests[stage]}.yaml"]


def _components(plan: PipelinePlan) -> dict[str, Callable[..., Any]]:
    """One kfp container component per stage, its command generated from dvc.yaml."""
    from kfp import dsl
    from kfp.dsl import Artifact, Dataset, Input, Model, Output, OutputPath

    def spec(stage: str, artifacts: dict[str, Any], extra: list[str]) -> dsl.ContainerSpec:
        definition = plan.stages[stage]
        uris = {option: str(value) for option, value in artifacts.items()}
        return dsl.ContainerSpec(
            image=plan.images[stage],
            command=definition.program,
            args=stage_args(definition, uris, extra),
        )

    @dsl.container_component
    def collect(params_root: str, raw: Output[Dataset]) -> dsl.ContainerSpec:
        return spec("collect", {"--out": raw.uri}, _params_arg(plan, "collect", params_root))

    @dsl.container_component
    def process(
        params_root: str,
        raw: Input[Dataset],
        processed: Output[Dataset],
        data_card: Output[Artifact],
    ) -> dsl.ContainerSpec:
        return spec(
            "process",
            {"--raw": raw.uri, "--out": processed.uri, "--report-dir": data_card.uri},
            _params_arg(plan, "process", params_root),
        )

    @dsl.container_component
    def train(
        params_root: str, processed: Input[Dataset], candidate: Output[Model]
    ) -> dsl.ContainerSpec:
        return spec(
            "train",
            {"--data": processed.uri, "--out": candidate.uri},
            _params_arg(plan, "train", params_root),
        )

    @dsl.container_component
    def evaluate(
        params_root: str,
        candidate: Input[Model],
        processed: Input[Dataset],
        metrics: Output[Artifact],
        details: Output[Artifact],
        plots: Output[Artifact],
        accuracy: OutputPath(float),  # type: ignore[valid-type]
        macro_f1: OutputPath(float),  # type: ignore[valid-type]
    ) -> dsl.ContainerSpec:
        gate = ["--accuracy-file", accuracy, "--macro-f1-file", macro_f1]
        return spec(
            "evaluate",
            {
                "--model": candidate.uri,
                "--data": processed.uri,
                "--metrics": metrics.uri,
                "--details": details.uri,
                "--plots": plots.uri,
            },
            [*_params_arg(plan, "evaluate", params_root), *gate],
        )

    @dsl.container_component
    def optimize(
        params_root: str,
        candidate: Input[Model],
        processed: Input[Dataset],
        optimized: Output[Model],
        optimization: Output[Artifact],
    ) -> dsl.ContainerSpec:
        return spec(
            "optimize",
            {
                "--model": candidate.uri,
                "--data": processed.uri,
                "--out": optimized.uri,
                "--report": optimization.uri,
            },
            _params_arg(plan, "optimize", params_root),
        )

    @dsl.container_component
    def register(
        params_root: str,
        models_root: str,
        candidate: Input[Model],
        metrics: Input[Artifact],
        optimized: Input[Model],
    ) -> dsl.ContainerSpec:
        cloud = ["--registry", models_root, SERVING_IMAGE_FLAG, plan.serving_image]
        return spec(
            "register",
            {"--model": candidate.uri, "--metrics": metrics.uri, "--optimized": optimized.uri},
            [*_params_arg(plan, "register", params_root), *cloud],
        )

    return {
        "collect": collect,
        "process": process,
        "train": train,
        "evaluate": evaluate,
        "optimize": optimize,
        "register": register,
    }


def _configure(task: Any, plan: PipelinePlan, stage: str) -> Any:
    """Caching, the environment, and a display name the console shows."""
    task.set_caching_options(plan.caching)
    task.set_display_name(stage)
    for name, value in sorted(plan.env.items()):
        task.set_env_variable(name, value)
    return task


def _train_on_vertex_machines(task: Any, vertex: VertexParams) -> None:
    """params.yaml `vertex:`'s machine and GPUs for the training step.

    Raises:
        StageDefinitionError: more than one worker: a pipeline step is one machine.
    """
    if vertex.workers > 1:
        raise StageDefinitionError(
            f"params.yaml vertex.workers is {vertex.workers}: a Vertex AI Pipelines step runs "
            "on one machine; set vertex.workers: 1 for `mega run --on vertex` (its GPUs still "
            "apply), or train on several machines with `mega train --on vertex`"
        )
    family = _MACHINE.fullmatch(vertex.machine_type)
    if not vertex.accelerator_count or (family and family["family"] in MEMORY_PER_CPU):
        cpus, memory = machine_resources(vertex)
        task.set_cpu_limit(cpus).set_memory_limit(memory)
    # else a GPU machine family (a2, g2, …): Vertex AI picks one that takes the GPUs.
    if vertex.accelerator_count:
        task.set_accelerator_type(vertex.accelerator_type)
        task.set_accelerator_limit(vertex.accelerator_count)


def build_pipeline(plan: PipelinePlan) -> Callable[..., Any]:
    """The kfp pipeline function of `plan` (compile it with `compile_pipeline`).

    Raises:
        StageDefinitionError: dvc.yaml's commands and the pipeline's artifacts disagree,
            or params.yaml's `vertex:` asks for what a pipeline step cannot be.
    """
    from kfp import dsl

    steps = _components(plan)
    missing = [stage for stage in STAGES if stage not in plan.stages]
    if missing:
        raise StageDefinitionError(
            f"dvc.yaml has no stage {', '.join(missing)}; the pipeline runs {', '.join(STAGES)}"
        )

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="collect → process → train → evaluate → "
        "gate → optimize → register, the stages of dvc.yaml in their containers",
    )
    def mega_pipeline(
        params_root: str = plan.params_root, models_root: str = plan.models_root
    ) -> None:
        def step(stage: str, **inputs: Any) -> Any:
            return _configure(steps[stage](params_root=params_root, **inputs), plan, stage)

        collect = step("collect")
        process = step("process", raw=collect.outputs["raw"])
        processed = process.outputs["processed"]
        train = step("train", processed=processed)
        _train_on_vertex_machines(train, plan.vertex)
        candidate = train.outputs["candidate"]
        evaluate = step("evaluate", candidate=candidate, processed=processed)
        # The floors of params.yaml, written into the pipeline: not run-time parameters,
        # so the gate and register (which reads the same params.yaml) never disagree.
        accurate = evaluate.outputs["accuracy"] >= plan.registry.min_accuracy
        balanced = evaluate.outputs["macro_f1"] >= plan.registry.min_macro_f1
        with dsl.If(accurate, name="accuracy-floor"), dsl.If(balanced, name="macro-f1-floor"):
            optimize = step("optimize", candidate=candidate, processed=processed)
            register = steps["register"](
                params_root=params_root,
                models_root=models_root,
                candidate=candidate,
                metrics=evaluate.outputs["metrics"],
                optimized=optimize.outputs["optimized"],
            )
            _configure(register, plan, "register")
            # Publishing is not a result to reuse: a registry deleted since must be
            # filled again (register itself uploads nothing twice).
            register.set_caching_options(False)

    return mega_pipeline


def compile_pipeline(plan: PipelinePlan, out: Path) -> Path:
    """Write the pipeline's YAML (kfp's IR, which Vertex AI Pipelines runs) to `out`,
    atomically; returns `out`."""
    import tempfile

    from kfp import compiler

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out.parent, suffix=".yaml", delete=False) as tmp:
        staged = Path(tmp.name)
    staged.chmod(0o644)  # as any file written here: a temporary file is the owner's only
    try:
        compiler.Compiler().compile(build_pipeline(plan), str(staged))
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    return out
