"""Run the kfp pipeline here, with kfp's own local orchestrator, the steps as processes.

`kfp.local` runs a pipeline's DAG (its dependencies, `dsl.If` conditions, artifacts and
output parameters) on this machine. Its subprocess runner is meant for lightweight
Python components; ours are container components whose commands are the containers'
CLIs, installed in this environment too, so each step's command can run here as it runs
in its image. Three adaptations make that so, each doing what Vertex AI Pipelines does:

1. the subprocess runner accepts a container component (its command runs as is);
2. a step's declared output artifacts are its outputs even when it writes no executor
   output file (Vertex AI's launcher registers them from the executor input);
3. a `dsl.If` on a named output of a step (`evaluate`'s `accuracy`) resolves it
   (kfp.local reads only outputs named `Output` there).

`compiled_steps` reads a compiled pipeline's steps and their wiring, for tests that
run or check each step's command themselves.

Only for tests: nothing here is used by `mega`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# An artifact's URI placeholder in a compiled step's command: (inputs|outputs, name).
ARTIFACT = re.compile(r"\{\{\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.uri\}\}")


def _declared_outputs(executor_input: Any, component_spec: Any) -> dict[str, Any]:
    from kfp.local import executor_output_utils as outputs

    written = executor_input.outputs.output_file
    executor_output = outputs.load_executor_output(written)
    if not os.path.isfile(written):
        for name, artifacts in executor_input.outputs.artifacts.items():
            executor_output.artifacts[name].CopyFrom(artifacts)
    return outputs.get_outputs_from_executor_output(executor_output, executor_input, component_spec)


def _named_output_resolver(original: Any) -> Any:
    def resolve(channel: str, io_store: Any) -> Any:
        reference = channel.removeprefix("pipelinechannel--")
        # `<task>-<output>`: task names may hold dashes, so every split is tried.
        for index, char in enumerate(reference):
            if char == "-":
                with contextlib.suppress(ValueError, KeyError):
                    return io_store.get_task_output(reference[:index], reference[index + 1 :])
        return original(channel, io_store)

    return staticmethod(resolve)


@contextlib.contextmanager
def local_kfp(monkeypatch: pytest.MonkeyPatch, pipeline_root: Path) -> Iterator[None]:
    """kfp.local set up to run our pipeline's steps as processes of this environment."""
    from kfp import local
    from kfp.local import executor_output_utils, subprocess_task_handler
    from kfp.local.orchestrator import enhanced_dag_orchestrator

    handler = subprocess_task_handler.SubprocessTaskHandler
    monkeypatch.setattr(handler, "validate_not_container_component", lambda self, command: None)
    monkeypatch.setattr(handler, "validate_image", lambda self, image: None)
    monkeypatch.setattr(executor_output_utils, "get_outputs_for_task", _declared_outputs)
    evaluator = enhanced_dag_orchestrator.ConditionEvaluator
    resolver = _named_output_resolver(evaluator._resolve_pipeline_channel)
    monkeypatch.setattr(evaluator, "_resolve_pipeline_channel", resolver)
    # The steps' `python` is this environment's.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    yield


def compiled_steps(spec: dict[str, Any]) -> dict[str, tuple[list[str], dict[str, tuple[str, str]]]]:
    """Each step (task) of the pipeline: its command, and where each input artifact comes
    from, (producer step, output name), followed through the gate's sub-DAGs."""
    components = spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    steps = {}

    def walk(dag: dict[str, Any], scope: dict[str, tuple[str, str]]) -> None:
        for name, task in dag["tasks"].items():
            sources = {}
            for key, given in task.get("inputs", {}).get("artifacts", {}).items():
                if "taskOutputArtifact" in given:
                    output = given["taskOutputArtifact"]
                    sources[key] = (output["producerTask"], output["outputArtifactKey"])
                else:
                    sources[key] = scope[given["componentInputArtifact"]]
            component = components[task["componentRef"]["name"]]
            if "dag" in component:  # a condition: its tasks see these sources
                walk(component["dag"], sources)
            else:
                container = executors[component["executorLabel"]]["container"]
                steps[name] = ([*container["command"], *container["args"]], sources)

    walk(spec["root"]["dag"], {})
    return steps
