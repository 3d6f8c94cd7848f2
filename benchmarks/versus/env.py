"""Cached virtual environments for the peers, kept apart from the project's own.

Each peer (img2dataset, LitServe, …) gets a venv of its own, built with the project's
uv from `peers/<peer>.txt`, a pinned requirements file compiled from `peers/<peer>.in`
(`python benchmarks/peers.py --lock PEER`). Nothing is installed into the project's
environment, so a peer's pins can never hide or cause a break there, and two peers with
conflicting pins do not meet. The venv's folder name carries a digest of the pinned
file, the install options and the Python version, so an edited pin builds a new venv
and an unchanged one is reused: only the first run pays for the install (uv's cache
makes a rebuild quick). They live under `$XDG_CACHE_HOME/mega-pipeline/bench-peers`
(`~/.cache` when unset), about 1 GB for the five peers (img2dataset alone about
760 MB). Building a peer's venv for new pins removes that peer's venvs of other pins
unless a run (of another clone, say) is using one, so two clones on different pins
rebuild in turn; remove the whole folder, when no benchmark runs, to reclaim the
space, and the next run rebuilds what it needs.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO

PEERS_DIR = Path(__file__).resolve().parent / "peers"
PEER_SIDE = Path(__file__).resolve().parent / "peer_side"
COMPLETE = ".complete"  # written last: a venv without it was cut short and is rebuilt
INSTALL_TIMEOUT = 1800  # seconds; a first install of a large peer downloads hundreds of MB
# As `make setup` installs ours: with bytecode, so neither side's start-up time includes
# compiling its imports (collect_startup_s compares the two).
INSTALL_OPTIONS = ("--compile-bytecode",)


class PeerUnavailableError(Exception):
    """A peer's environment cannot be built; the message says why in one line."""


def env_root() -> Path:
    """Where the peers' venvs live: `$XDG_CACHE_HOME/mega-pipeline/bench-peers`, `~/.cache/…`
    when XDG_CACHE_HOME is unset (DVC's default remote, from the Makefile, is always under
    `~/.cache`, so the two part when XDG_CACHE_HOME is set)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "mega-pipeline" / "bench-peers"


def uv() -> str:
    """The project's uv (`make setup` puts it beside this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "uv"
    found = str(beside) if beside.exists() else shutil.which("uv")
    if found is None:
        raise PeerUnavailableError("uv not found: run `make setup` first")
    return found


def pinned(peer: str) -> Path:
    """The peer's pinned requirements, or PeerUnavailableError naming the command to make them."""
    path = PEERS_DIR / f"{peer}.txt"
    if not path.exists():
        raise PeerUnavailableError(
            f"no {path.name}: run `python benchmarks/peers.py --lock {peer}`"
        )
    return path


def env_dir(peer: str) -> Path:
    """The venv folder for `peer`'s current pins, install options and this Python's version."""
    digest = hashlib.sha256(pinned(peer).read_bytes())
    digest.update(sys.version.split()[0].encode())
    digest.update(" ".join(INSTALL_OPTIONS).encode())
    return env_root() / f"{peer}-{digest.hexdigest()[:12]}"


# The lock file of each venv this process runs, held shared until it exits: a run
# building other pins removes only venvs no run holds (`_prune_superseded`).
_IN_USE: dict[Path, IO[str]] = {}


def peer_python(peer: str) -> Path:
    """The Python of `peer`'s venv, built first if needed; held in use until this process
    exits. Building one removes the peer's venvs of other pins that no run holds.
    Not for concurrent use from several threads of one process.

    Raises PeerUnavailableError (with uv's last error line) when the venv cannot be built,
    so the caller reports the peer as unavailable instead of measuring anything else.
    """
    target = env_dir(peer)
    python = target / "bin" / "python"
    if target in _IN_USE:  # two peers of one venv (fastapi-def-1w and -2w)
        return python
    target.parent.mkdir(parents=True, exist_ok=True)
    # Two lock files: the venv's, held shared by every run using it (so a prune skips
    # it), and its build lock, held only while building (so a run that finds another
    # building waits for that build, not for that whole run).
    handle = open(target.with_suffix(".lock"), "w")  # noqa: SIM115 - kept in _IN_USE
    try:
        fcntl.flock(handle, fcntl.LOCK_SH)
        built = False
        if not (target / COMPLETE).exists():
            with open(target.with_suffix(".build"), "w") as building:
                fcntl.flock(building, fcntl.LOCK_EX)
                if not (target / COMPLETE).exists():  # another run may have built it
                    _build(peer, target, python)
                    built = True
    except BaseException:
        handle.close()
        raise
    _IN_USE[target] = handle
    if built:
        try:
            _prune_superseded(peer, target)
        except OSError as exc:  # tidying up must not cost the run its measurements
            print(f"peers: could not remove older {peer} venvs: {exc}", file=sys.stderr)
    return python


def _build(peer: str, target: Path, python: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    print(f"peers: building the {peer} environment in {target} (once)", file=sys.stderr)
    try:
        _run([uv(), "venv", "--quiet", "--python", sys.executable, str(target)])
        _run([uv(), "pip", "install", "--quiet", *INSTALL_OPTIONS, "--python", str(python),
              "-r", str(pinned(peer))])  # fmt: skip
    except PeerUnavailableError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    (target / COMPLETE).touch()


def _prune_superseded(peer: str, current: Path) -> None:
    """Remove `peer`'s venvs other than `current` (other pins, options or Python) that no
    run holds. Their empty lock files stay: a run waiting on one must find the same file."""
    own = re.compile(rf"{re.escape(peer)}-[0-9a-f]{{12}}")
    for old in current.parent.iterdir():
        if old == current or not old.is_dir() or not own.fullmatch(old.name):
            continue
        with open(old.with_suffix(".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a run uses it
            print(f"peers: removing {old.name}, built for other {peer} pins", file=sys.stderr)
            # First its mark of completeness: a removal cut short leaves a venv that
            # the next run rebuilds, not one it trusts.
            (old / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(old, ignore_errors=True)


def _run(command: list[str], cwd: Path | None = None) -> None:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False, cwd=cwd
        )
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailableError(
            f"`{' '.join(command[:3])}` took over {INSTALL_TIMEOUT} s"
        ) from exc
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise PeerUnavailableError(lines[-1].strip() if lines else f"exit code {done.returncode}")


def lock(peer: str) -> Path:
    """Compile `peers/<peer>.in` into the pinned `peers/<peer>.txt` (no index addresses)."""
    source = PEERS_DIR / f"{peer}.in"
    if not source.exists():
        known = ", ".join(sorted(p.stem for p in PEERS_DIR.glob("*.in"))) or "none"
        raise PeerUnavailableError(f"no {source.name} (peers with sources: {known})")
    target = source.with_suffix(".txt")
    # Relative names, run in the folder: the file's comments then name no local paths.
    _run([uv(), "pip", "compile", source.name, "--python-version", "3.11", "--quiet",
          "--no-emit-index-url", "--no-emit-find-links",
          "--custom-compile-command", f"python benchmarks/peers.py --lock {peer}",
          "-o", target.name], cwd=PEERS_DIR)  # fmt: skip
    return target
