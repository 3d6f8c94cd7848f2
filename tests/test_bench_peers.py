"""The peer comparisons' shared pieces: alternating rounds, ratio lines, peer venvs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

from versus import common, env


def test_sides_alternate_within_every_round() -> None:
    calls: list[str] = []

    def side(name: str, rate: float) -> Callable[[], float]:
        def run() -> float:
            calls.append(name)
            return rate

        return run

    results = common.alternate({"ours": side("ours", 2.0), "peer": side("peer", 1.0)}, rounds=3)
    assert calls == ["ours", "peer"] * 3  # never all of one side first: drift hits both
    assert results == {"ours": [2.0] * 3, "peer": [1.0] * 3}


def test_the_ratio_is_the_median_of_per_round_ratios() -> None:
    # Round ratios 2.0, 1.0, 4.0: the median is 2.0, not the ratio of medians (3/1.5).
    line = common.ratio_line("x", [2.0, 3.0, 4.0], [1.0, 3.0, 1.0], "peer")
    assert line == "x: 2.00x (ours 3 images/s vs peer 1 images/s)"
    with pytest.raises(ValueError, match="one figure per round"):
        common.median_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1"):
        common.alternate({"ours": lambda: 1.0}, rounds=0)


@pytest.fixture
def peer_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    peers = tmp_path / "peers"
    peers.mkdir()
    monkeypatch.setattr(env, "PEERS_DIR", peers)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return peers


def test_a_peer_without_pins_names_the_command_that_makes_them(peer_dir: Path) -> None:
    with pytest.raises(env.PeerUnavailableError, match=r"peers.py --lock nope"):
        env.peer_python("nope")


def test_a_built_venv_is_reused_and_new_pins_get_a_new_one(
    peer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (peer_dir / "tool.txt").write_text("tool==1.0\n")
    built = env.env_dir("tool")
    (built / env.COMPLETE).parent.mkdir(parents=True)
    (built / env.COMPLETE).touch()
    monkeypatch.setattr(env, "_run", lambda *a, **k: pytest.fail("rebuilt a complete venv"))
    assert env.peer_python("tool") == built / "bin" / "python"
    (peer_dir / "tool.txt").write_text("tool==2.0\n")
    assert env.env_dir("tool") != built


def test_a_failed_install_is_reported_and_leaves_no_half_venv(peer_dir: Path) -> None:
    # A pin uv cannot satisfy offline: a wheel file that does not exist.
    (peer_dir / "broken.txt").write_text(f"{peer_dir / 'missing-1.0-py3-none-any.whl'}\n")
    with pytest.raises(env.PeerUnavailableError) as caught:
        env.peer_python("broken")
    assert "missing-1.0-py3-none-any.whl" in str(caught.value)
    assert not env.env_dir("broken").exists()


def test_peers_cli_refuses_an_unknown_area() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/peers.py"), "--only", "collect,gpu"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown area gpu; choose from collect, inputs, serve, process" in done.stderr
