"""The images' names and tags, locally and in Artifact Registry.

Locally compose names each image `mega-pipeline/<container>:<tag>`; pushed, the same
image is `<MEGA_IMAGE_REPOSITORY>/<container>:<tag>`. The tag is the commit's first 12
characters, with `-dirty` when the working tree has changes, so a job spec names the
exact code it runs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

LOCAL_REPOSITORY = "mega-pipeline"
TRAINING_IMAGE = "model-training"
# The training image built with ACCELERATOR=gpu (TensorFlow's CUDA wheels) is tagged
# `<tag>-gpu` (src/model-training/README.md).
GPU_TAG_SUFFIX = "-gpu"


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()


def head_commit(root: Path) -> str:
    """The checked-out commit of the repository at `root`, in full."""
    return _git(root, "rev-parse", "HEAD")


def image_tag(root: Path) -> str:
    """The commit's first 12 characters, `-dirty` when the working tree has changes."""
    sha = head_commit(root)[:12]
    # Untracked files count: the build context takes them (unless .dockerignore'd).
    return f"{sha}-dirty" if _git(root, "status", "--porcelain") else sha


def remote_image(repository: str, container: str, tag: str) -> str:
    """`container`'s image at `tag` in the Artifact Registry `repository` (its registryUri)."""
    return f"{repository.rstrip('/')}/{container}:{tag}"
