"""Running ours and a peer alternately, and the lines `benchmarks/peers.py` prints.

Every comparison runs each side once per round, in turn, for several rounds, so slow
drift on a shared machine (other jobs, thermal limits) falls on both sides alike. The
printed ratio is the median of the per-round ratios, and the two figures beside it
are those of the round that gave it (`median_round`): each side's own median would
come from different rounds and need not give the printed ratio.

The targets of docs/performance.md are kept here, in `TARGETS`, and a line that has
one ends with whether it was met.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

ROUNDS = 3

LEGEND = """\
How to read the results (on stdout; progress lines go to stderr):
  NAME: 1.30x (ours A vs PEER B; median of 3 rounds (round 2))
      the ratio ours ÷ peer of two rates: above 1 ours is faster, below 1 the peer
      is. Every round runs each side once, in turn; the ratio is the median of the
      rounds' ratios, and A and B are the rates of the round that gave it.
  *_vs_latency_bound, *_vs_ceiling: ours as a share of a reference rate (the latency
      bound: 32 requests in flight / 20 ms each; the ceiling: an upload endpoint that
      answers a constant, no inference): up to about 1, higher is better.
  *_startup_s, *_p99_ms: times in seconds and milliseconds: lower is better.
  … · target ≥ 1.2x: met / NOT met: whether the line reaches its target from
      docs/performance.md (lines without a target have none).
  NAME: unavailable (reason): the peer could not be installed or run."""


def alternate(
    sides: dict[str, Callable[[], float]],
    rounds: int = ROUNDS,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Each side's result per round, the sides run in turn in every round.

    `sides` maps a name to a run returning one figure (a rate, say); the dict's order
    is the order within a round. `on_round`, when given, is called with the round's
    number (1, 2, …) before the round starts, for progress lines. Returns name →
    `rounds` figures, in round order. Raises ValueError when `rounds` < 1.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    results: dict[str, list[float]] = {name: [] for name in sides}
    for number in range(1, rounds + 1):
        if on_round is not None:
            on_round(number)
        for name, run in sides.items():
            results[name].append(run())
    return results


@dataclass(frozen=True)
class MedianRound:
    """The round whose ours / peer ratio is the median of the rounds' ratios.

    `index` counts from 0; `ours` and `peer` are that round's figures, so
    `ratio == ours / peer` exactly; `rounds` is how many rounds there were.
    """

    ratio: float
    ours: float
    peer: float
    index: int
    rounds: int

    def note(self) -> str:
        """`median of 3 rounds (round 2)`, or `1 round`: which round the figures are from."""
        if self.rounds == 1:
            return "1 round"
        # An even count has no middle round: the lower of the two middle ones is shown.
        lower = "lower " if self.rounds % 2 == 0 else ""
        return f"{lower}median of {self.rounds} rounds (round {self.index + 1})"


def median_round(ours: list[float], peer: list[float]) -> MedianRound:
    """The round with the median ratio ours / peer (the lower middle one for an even count).

    `ours` and `peer` hold one figure per round, in round order. Raises ValueError when
    their lengths differ or they are empty. A round whose peer figure is 0 (the peer answered
    nothing) has an infinite ratio rather than stopping the whole run.
    """
    if len(ours) != len(peer) or not ours:
        raise ValueError("ours and peer need one figure per round each")
    ratios = [o / p if p else math.inf for o, p in zip(ours, peer, strict=True)]
    # A real round, not the mean of the two middle ratios: its figures give its ratio.
    index = sorted(range(len(ratios)), key=ratios.__getitem__)[(len(ratios) - 1) // 2]
    return MedianRound(ratios[index], ours[index], peer[index], index, len(ratios))


def median_ratio(ours: list[float], peer: list[float]) -> float:
    """The median round's ours / peer (`median_round`: the lower middle one of an even count)."""
    return median_round(ours, peer).ratio


@dataclass(frozen=True)
class Target:
    """A goal for one printed figure: `at_least` (≥) or at most (≤) `bound`."""

    bound: float
    at_least: bool = True
    suffix: str = ""  # after the bound as printed: "x", " s"
    subject: str = ""  # what is compared when the line has two figures: "ours "

    def __str__(self) -> str:
        return f"{self.subject}{'≥' if self.at_least else '≤'} {self.bound:.1f}{self.suffix}"

    def met(self, value: float) -> bool:
        """Whether `value` (as printed, already rounded) meets the goal."""
        return value >= self.bound if self.at_least else value <= self.bound


# docs/performance.md's targets, by line name; lines not named here have none.
TARGETS: dict[str, Target] = {
    "collect_steady_10000": Target(1.2, suffix="x"),
    "collect_vs_latency_bound": Target(0.5),
    "collect_startup_s": Target(1.5, at_least=False, suffix=" s", subject="ours "),
    **{
        f"input_{data}_{part}": Target(1.0, suffix="x")
        for data in ("digits", "photos128")
        for part in ("first_epoch", "steady")
    },
    "serve_vs_best_peer": Target(2.0, suffix="x"),
    "serve_vs_ceiling": Target(0.7),
}


def target_note(name: str, value: float, digits: int = 2) -> str:
    """` · target ≥ 1.2x: met` (or `NOT met`) for a line with a target, else "".

    `value` is compared as printed, rounded to `digits` decimals, so that a line
    never shows 1.20x beside "NOT met" for a target of 1.2x.
    """
    target = TARGETS.get(name)
    if target is None:
        return ""
    verdict = "met" if target.met(round(value, digits)) else "NOT met"
    return f" · target {target}: {verdict}"


def ratio_line(
    name: str,
    ours: list[float],
    peer: list[float],
    peer_name: str,
    unit: str = "images/s",
    *,
    share: bool = False,
) -> str:
    """`name: 1.23x (ours 900 images/s vs PEER 730 images/s; median of 3 rounds (round 2))`.

    `ours` and `peer` are per-round figures where higher is better for ours. The ratio
    is the median round's, with that round's two figures. `share` prints the ratio
    without the `x`, for a share of a bound (`peer` is then the bound). A target in
    `TARGETS` is appended. Raises ValueError as `median_round` does.
    """
    median = median_round(ours, peer)
    figure = f"{median.ratio:.2f}" + ("" if share else "x")
    return (
        f"{name}: {figure} (ours {median.ours:,.0f} {unit} vs {peer_name} "
        f"{median.peer:,.0f} {unit}; {median.note()}){target_note(name, median.ratio)}"
    )


def unavailable_line(name: str, reason: str) -> str:
    """The line for a comparison whose peer could not be installed or run."""
    return f"{name}: unavailable ({reason})"


def announce(label: str, rounds: int) -> Callable[[int], None]:
    """An `alternate` `on_round` that prints `  LABEL, round k of N` (or `  round k of N`
    with no label) on stderr at the start of each round."""
    prefix = f"{label}, " if label else ""

    def on_round(number: int) -> None:
        print(f"  {prefix}round {number} of {rounds}", file=sys.stderr, flush=True)

    return on_round
