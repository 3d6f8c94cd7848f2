"""The peer comparisons' shared pieces: alternating rounds, ratio lines, peer venvs."""

from __future__ import annotations

import fcntl
import importlib.util
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    assert line.startswith("x: 2.00x (ours 2 images/s vs peer 1 images/s;")
    with pytest.raises(ValueError, match="one figure per round"):
        common.median_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least 1"):
        common.alternate({"ours": lambda: 1.0}, rounds=0)


def test_a_line_gives_the_two_figures_of_the_round_with_the_median_ratio() -> None:
    # Each side's own median (1,900 and 2,500) would give 0.76, not the median ratio
    # (round 1: 1,900 / 2,000 = 0.95): the figures shown must give the ratio shown.
    ours, ceiling = [1_900.0, 2_400.0, 1_000.0], [2_000.0, 2_500.0, 4_000.0]
    line = common.ratio_line("serve_vs_ceiling", ours, ceiling, "ceiling", "req/s", share=True)
    assert line.startswith(
        "serve_vs_ceiling: 0.95 (ours 1,900 req/s vs ceiling 2,000 req/s; "
        "median of 3 rounds (round 1))"
    )
    median = common.median_round(ours, ceiling)
    assert median.ratio == median.ours / median.peer
    # An even count: the lower middle round, a real one, not a mean of two.
    assert common.median_round([1.0, 4.0, 3.0, 2.0], [1.0] * 4).index == 3
    assert common.median_round([5.0], [2.0]).note() == "1 round"
    assert (
        common.median_round([1.0, 2.0], [1.0, 1.0]).note() == "lower median of 2 rounds (round 1)"
    )


def test_a_round_whose_peer_answered_nothing_does_not_stop_the_run() -> None:
    # The ceiling or a peer at 0 req/s in one round: an infinite ratio for that round.
    median = common.median_round([2.0, 3.0, 4.0], [1.0, 0.0, 2.0])
    assert (median.ratio, median.index) == (2.0, 2)
    assert common.median_round([1.0], [0.0]).ratio == float("inf")


def test_announce_prints_the_round_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    common.announce("10,000 URLs", 3)(2)
    common.announce("", 3)(1)
    assert capsys.readouterr().err == "  10,000 URLs, round 2 of 3\n  round 1 of 3\n"


def test_alternate_announces_each_round_before_running_it() -> None:
    events: list[str] = []

    def run() -> float:
        events.append("run")
        return 1.0

    common.alternate({"ours": run}, rounds=2, on_round=lambda n: events.append(f"round {n}"))
    assert events == ["round 1", "run", "round 2", "run"]


@pytest.mark.parametrize(
    ("name", "value", "note"),
    [
        ("collect_steady_10000", 1.25, " · target ≥ 1.2x: met"),
        ("collect_steady_10000", 1.00, " · target ≥ 1.2x: NOT met"),
        ("collect_steady_10000", 1.199, " · target ≥ 1.2x: met"),  # printed as 1.20x
        ("collect_vs_latency_bound", 0.49, " · target ≥ 0.5: NOT met"),
        ("serve_vs_ceiling", 0.97, " · target ≥ 0.7: met"),
        ("serve_vs_best_peer", 1.46, " · target ≥ 2.0x: NOT met"),
        ("input_photos128_steady", 1.0, " · target ≥ 1.0x: met"),
        ("input_photos128_steady_vs_replay", 0.3, ""),  # no target
        ("process_vs_dask", 1.7, ""),
    ],
)
def test_lines_with_a_target_say_whether_it_was_met(name: str, value: float, note: str) -> None:
    assert common.target_note(name, value) == note


def test_the_start_up_target_is_a_ceiling_on_our_time() -> None:
    assert common.target_note("collect_startup_s", 1.8, digits=1) == (
        " · target ours ≤ 1.5 s: NOT met"
    )
    assert common.target_note("collect_startup_s", 1.5, digits=1).endswith(": met")
    line = common.ratio_line("collect_steady_10000", [1_314.0], [1_303.0], "img2dataset")
    assert line.endswith("; 1 round) · target ≥ 1.2x: NOT met")


@pytest.fixture
def peer_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    peers = tmp_path / "peers"
    peers.mkdir()
    monkeypatch.setattr(env, "PEERS_DIR", peers)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    in_use: dict[Path, Any] = {}
    monkeypatch.setattr(env, "_IN_USE", in_use)
    yield peers
    for handle in in_use.values():  # what the test's "run" held, released at its end
        handle.close()


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


def fake_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """`uv venv` makes the folder; nothing is installed."""

    def run(command: list[str], cwd: Path | None = None) -> None:
        if command[1] == "venv":
            Path(command[-1]).mkdir(parents=True)

    monkeypatch.setattr(env, "_run", run)


def complete_venv(peer: str) -> Path:
    folder = env.env_dir(peer)
    folder.mkdir(parents=True)
    (folder / env.COMPLETE).touch()
    folder.with_suffix(".lock").touch()
    return folder


def test_new_pins_remove_the_peers_venvs_of_older_pins_only(
    peer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (peer_dir / "tool.txt").write_text("tool==1.0\n")
    (peer_dir / "tool-extra.txt").write_text("extra==1.0\n")
    old, other_peer = complete_venv("tool"), complete_venv("tool-extra")
    (peer_dir / "tool.txt").write_text("tool==2.0\n")
    fake_build(monkeypatch)
    new = env.peer_python("tool").parent.parent
    assert new != old and (new / env.COMPLETE).exists()
    assert not old.exists()
    assert (other_peer / env.COMPLETE).exists()  # a peer whose name starts the same


def test_a_venv_whose_lock_another_run_holds_is_not_removed(
    peer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (peer_dir / "tool.txt").write_text("tool==1.0\n")
    old = complete_venv("tool")
    (peer_dir / "tool.txt").write_text("tool==2.0\n")
    fake_build(monkeypatch)
    with open(old.with_suffix(".lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        env.peer_python("tool")
    assert (old / env.COMPLETE).exists()


def test_a_venv_a_run_uses_is_not_removed(peer_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This process stands for a run of another clone: it holds the 1.0 venv until it exits.
    fake_build(monkeypatch)
    (peer_dir / "tool.txt").write_text("tool==1.0\n")
    in_use = env.peer_python("tool").parent.parent
    (peer_dir / "tool.txt").write_text("tool==2.0\n")
    assert env.peer_python("tool").parent.parent != in_use
    assert (in_use / env.COMPLETE).exists()


def test_a_venv_in_use_can_be_asked_for_again_and_shared(
    peer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl
    import threading

    fake_build(monkeypatch)
    (peer_dir / "tool.txt").write_text("tool==1.0\n")
    python = env.peer_python("tool")
    # Asked again (fastapi-def-1w and -2w share a venv): answered, not waiting on itself.
    again = threading.Thread(target=env.peer_python, args=("tool",), daemon=True)
    again.start()
    again.join(10)
    assert not again.is_alive()
    # Another run (here another open file) may use it at the same time.
    with open(python.parent.parent.with_suffix(".lock"), "w") as other:
        fcntl.flock(other, fcntl.LOCK_SH | fcntl.LOCK_NB)


def tiny_wheel(folder: Path) -> Path:
    """A one-module wheel (`tinypeer`), installable offline."""
    path = folder / "tinypeer-1.0-py3-none-any.whl"
    files = {
        "tinypeer.py": "ANSWER = 42\n",
        "tinypeer-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypeer\nVersion: 1.0\n",
        "tinypeer-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + "tinypeer-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, "tinypeer-1.0.dist-info/RECORD": record}.items():
            wheel.writestr(name, text)
    return path


def test_a_peer_venv_holds_its_bytecode_as_ours_does(peer_dir: Path) -> None:
    # Compiled at install time like `make setup`'s: collect_startup_s would otherwise
    # count the peer's compiling of its imports, which ours does not pay.
    (peer_dir / "tiny.txt").write_text(f"{tiny_wheel(peer_dir)}\n")
    python = env.peer_python("tiny")
    found = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('tinypeer').origin)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(importlib.util.cache_from_source(found)).exists()


def test_other_install_options_get_another_venv(
    peer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (peer_dir / "tool.txt").write_text("tool==1.0\n")
    compiled = env.env_dir("tool")
    monkeypatch.setattr(env, "INSTALL_OPTIONS", ())
    assert env.env_dir("tool") != compiled


def test_a_failed_install_is_reported_and_leaves_no_half_venv(peer_dir: Path) -> None:
    # A pin uv cannot satisfy offline: a wheel file that does not exist.
    (peer_dir / "broken.txt").write_text(f"{peer_dir / 'missing-1.0-py3-none-any.whl'}\n")
    with pytest.raises(env.PeerUnavailableError) as caught:
        env.peer_python("broken")
    assert "missing-1.0-py3-none-any.whl" in str(caught.value)
    assert not env.env_dir("broken").exists()
    # Nothing held: another run may build it at once.
    assert env.env_dir("broken") not in env._IN_USE
    with open(env.env_dir("broken").with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_two_runs_that_both_find_no_venv_build_it_once_and_neither_waits_for_the_other(
    peer_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two runs (threads here: flock treats each open file apart) both find the venv not
    # built yet. One builds it; the other must get it once it is built, while the first
    # still holds it for the rest of its run.
    import threading

    builds: list[str] = []

    def run(command: list[str], cwd: Path | None = None) -> None:
        if command[1] == "venv":
            builds.append(command[-1])
            Path(command[-1]).mkdir(parents=True)

    class NoneHeld(dict):  # each thread stands for a run of its own
        def __contains__(self, key: object) -> bool:
            return False

    # Both runs look for the venv before either goes on to build it.
    both_looked = threading.Barrier(2, timeout=10)
    looked: set[int] = set()
    exists = Path.exists

    def exists_after_both_looked(path: Path) -> bool:
        found = exists(path)
        if path.name == env.COMPLETE and threading.get_ident() not in looked:
            looked.add(threading.get_ident())
            both_looked.wait()
        return found

    held: dict[Path, Any] = NoneHeld()
    monkeypatch.setattr(env, "_run", run)
    monkeypatch.setattr(env, "_IN_USE", held)
    monkeypatch.setattr(Path, "exists", exists_after_both_looked)
    (peer_dir / "tool.txt").write_text("tool==1.0\n")
    runs = [threading.Thread(target=env.peer_python, args=("tool",), daemon=True) for _ in "ab"]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(10)
    try:
        assert not any(t.is_alive() for t in runs), "one run waited for the other's end"
        assert builds == [str(env.env_dir("tool"))]
    finally:
        for handle in held.values():
            handle.close()


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


def test_serve_lines_take_the_best_peer_and_p99_from_the_median_round() -> None:
    from versus import serve

    # The fastest peer changes between rounds; ours / best: 2.0, 1.5, 3.0 → round 1.
    rates = {
        "ours": [2_000.0, 3_000.0, 3_000.0],
        "ceiling": [2_500.0, 3_000.0, 6_000.0],
        "fastapi-def-2w": [1_000.0, 1_000.0, 1_000.0],
        "litserve": [500.0, 2_000.0, 500.0],
    }
    runs = serve.Runs(
        results={
            name: [{"p99_ms": 10.0 * (i + 1) + len(name)} for i in range(3)]
            for name in ("ours", "fastapi-def-2w", "litserve")
        },
        failures={"bentoml": "503s"},
    )
    lines = serve.summary(rates, runs, {"fastapi-def-1w": "no venv"})
    by_name = {line.split(":")[0]: line for line in lines}
    assert by_name["serve_vs_best_peer"].startswith(
        "serve_vs_best_peer: 2.00x (ours 2,000 req/s vs best peer fastapi-def-2w 1,000 req/s; "
        "median of 3 rounds (round 1))"
    )
    assert by_name["serve_p99_ms"].startswith(
        "serve_p99_ms: ours 14.0 vs best peer fastapi-def-2w 24.0"
    )
    # Ratios 0.80, 1.00, 0.50: round 1's, with round 1's rates (not 3,000 vs 3,000).
    assert (
        "serve_vs_ceiling: 0.80 (ours 2,000 req/s vs ceiling 2,500 req/s;"
        in by_name["serve_vs_ceiling"]
    )
    assert by_name["serve_vs_bentoml"] == "serve_vs_bentoml: unavailable (503s)"


def test_bentoml_keeps_its_home_in_the_runs_scratch_folder(tmp_path: Path) -> None:
    from versus import serve

    peers = {peer.name: peer for peer in serve.PEERS}
    env = serve.peer_env(peers["bentoml"], {"PATH": "/bin"}, tmp_path)
    assert env == {"PATH": "/bin", "BENTOML_HOME": str(tmp_path / "bentoml-home")}
    assert serve.peer_env(peers["litserve"], {"PATH": "/bin"}, tmp_path) == {"PATH": "/bin"}


def _peers_cli() -> Any:
    spec = importlib.util.spec_from_file_location("bench_peers_cli", REPO / "benchmarks/peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_another_python_is_told_in_one_line_which_to_use(monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: outside the venv, peers.py died minutes in on `import psutil`.
    peers = _peers_cli()
    monkeypatch.setattr(peers, "PROJECT_MODULES", ("json", "no_such_module_here"))
    with pytest.raises(SystemExit) as exited:
        peers.main(["--only", "process"])
    message = str(exited.value.code)
    assert "no module 'no_such_module_here'" in message
    assert "`.venv/bin/python benchmarks/peers.py` or `make bench-peers`" in message
    assert "\n" not in message


def test_help_names_the_areas_the_defaults_and_the_peers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        _peers_cli().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "from collect, inputs, serve, process (default: collect,inputs,serve,process)" in text
    assert "(default: 3)" in text
    assert "bentoml, dask, fastapi-litert, img2dataset, litserve" in text
    assert "make run" in text


def test_a_run_starts_with_the_legend_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    peers = _peers_cli()
    area = type("Area", (), {"compare": staticmethod(lambda rounds: [f"x: {rounds}"])})
    monkeypatch.setattr(peers.importlib, "import_module", lambda name: area)
    peers.main(["--only", "process,serve", "--rounds", "1"])
    out = capsys.readouterr().out
    assert out.startswith(common.LEGEND + "\n== process\nx: 1\n")
    assert out.count("How to read") == 1
    assert "above 1 ours is faster" in common.LEGEND


def test_inputs_import_tensorflow_quietly_after_the_processor_forked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: absl, oneDNN and cuInit lines filled the output of the inputs area.
    from versus import inputs

    from trainer import quiet

    calls: list[str] = []
    photos = inputs.Workload("photos128", Path("p"), Path("r"), "rgb", 128)
    monkeypatch.setattr(inputs, "make_photos", lambda folder: calls.append("photos") or photos)
    monkeypatch.setattr(quiet, "quiet_tensorflow_import", lambda: calls.append("quiet"))
    monkeypatch.setattr(inputs, "warm_up", lambda work: calls.append(f"warm {work.name}"))
    monkeypatch.setattr(
        inputs, "compare_workload", lambda work, rounds: calls.append(work.name) or []
    )
    inputs.compare(1)
    assert calls[:2] == ["photos", "quiet"]
    assert calls[-1] == "photos128"
