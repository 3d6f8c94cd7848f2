"""Reading Dockerfiles in tests: build stages and the instructions that apply in each."""

from __future__ import annotations

from pathlib import Path


def dockerfile_stages(path: Path) -> dict[str, list[str]]:
    """A Dockerfile's build stages: name (`FROM … AS name`, else its index) → instructions.

    Continued lines are joined into one instruction; comments are left out.
    """
    text = path.read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0].upper() == "FROM":
            name = words[3] if len(words) > 3 and words[2].upper() == "AS" else str(len(stages))
            current = stages[name] = []
        current.append(line)
    return stages


def stage_instruction(stages: dict[str, list[str]], stage: str, keyword: str) -> str | None:
    """The argument of the last `keyword` (e.g. USER, ENTRYPOINT) that applies in `stage`,
    looking through the stages it is built `FROM`; None when there is none."""
    for line in reversed(stages[stage]):
        word, _, argument = line.partition(" ")
        if word.upper() == keyword:
            return argument.strip()
    base = stages[stage][0].split()[1]
    return stage_instruction(stages, base, keyword) if base in stages else None
