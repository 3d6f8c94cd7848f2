"""The selection rule: which LiteRT variant a registry version serves.

The optimize stage marks the eligible variants (`mark_eligible`: accuracy and F1, the
same on every run); register times every variant on the machine that publishes
(`time_variants`) and serves the fastest eligible one (`select`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np

from common.contracts import Optimization, VariantScores
from common.params import OptimizeParams
from trainer.inputs import InputError
from trainer.litert import time_litert

BASELINE: Final = "float32"
# Measured for the gain of distillation, never served.
NOT_SELECTABLE = frozenset({"scratch_student_int8"})


# Accuracies are shares of the same test items: a drop equal to the limit, computed in
# floating point, must not fail by a rounding error.
TOLERANCE = 1e-9


def mark_eligible(
    rows: list[VariantScores], max_accuracy_drop: float, min_macro_f1: float
) -> Optimization:
    """The stage's report: `rows` with `eligible` set, no selection yet.

    Eligible: selectable, test accuracy at least float32's minus `max_accuracy_drop`,
    and macro F1 at least the registry's `min_macro_f1`.

    Raises:
        ValueError: no float32 row.
    """
    base = next((row for row in rows if row.name == BASELINE), None)
    if base is None:
        raise ValueError("the optimization table needs the float32 baseline row")
    floor = base.accuracy - max_accuracy_drop
    marked = [
        row.model_copy(
            update={
                "eligible": row.name not in NOT_SELECTABLE
                and row.accuracy >= floor - TOLERANCE
                and row.macro_f1 >= min_macro_f1 - TOLERANCE
            }
        )
        for row in rows
    ]
    # Every field set explicitly: unset fields are left out of the written document.
    return Optimization(baseline=BASELINE, max_accuracy_drop=max_accuracy_drop, variants=marked)


def time_variants(
    report: Optimization, folder: Path, images: np.ndarray, params: OptimizeParams
) -> Optimization:
    """`report` with every row timed in LiteRT on `images` (float `[N, H, W, C]`, 0–255,
    the stage's `TIMING_IMAGES`): p50/p95 of `params.latency_runs` single-image calls,
    throughput at `params.throughput_batch`. Each row's file is read from `folder`.

    Raises:
        trainer.inputs.InputError: LiteRT cannot run a variant's file on these images
            (named): the folder is broken, re-run optimize.
    """
    timed = []
    for row in report.variants:
        path = folder / row.file
        try:
            speed = time_litert(
                path.read_bytes(),
                images,
                latency_runs=params.latency_runs,
                batch=params.throughput_batch,
            )
        except (ValueError, RuntimeError) as exc:  # what the interpreter raises
            raise InputError(
                f"{path}: LiteRT cannot run variant {row.name!r} on the timing images "
                f"({str(exc).splitlines()[0]}); re-run the optimize stage"
            ) from exc
        timed.append(
            row.model_copy(
                update={
                    "latency_p50_ms": speed.latency_p50_ms,
                    "latency_p95_ms": speed.latency_p95_ms,
                    "throughput_per_s": speed.throughput_per_s,
                }
            )
        )
    return report.model_copy(update={"variants": timed})


def select(report: Optimization, latency_tie: float = 0.0) -> Optimization:
    """The selection rule over a timed report: among the eligible variants whose p50 is
    within `latency_tie` (a share, 0.1 = 10 %) of the fastest eligible one, the smallest
    file (then the lower p50); with none eligible, float32. Returns `report` with
    `selected` and `reason` set.

    Timings move by a few percent from run to run: without the tie margin two variants
    that close would take turns being served, each turn a new registry version.

    Raises:
        ValueError: an eligible row without a p50 latency (the report was not timed).
    """
    base = report.variant(BASELINE)
    eligible = [(row, row.latency_p50_ms) for row in report.variants if row.eligible]
    timed = [(row, p50) for row, p50 in eligible if p50 is not None]
    if len(timed) < len(eligible):
        raise ValueError("the selection needs every eligible variant timed (time_variants)")
    drop = report.max_accuracy_drop
    if not timed:
        return report.model_copy(
            update={
                "selected": BASELINE,
                "reason": (
                    f"no variant within {drop:.3f} of float32's test accuracy "
                    f"({base.accuracy:.4f}) and the macro F1 floor: serving float32"
                ),
            }
        )
    fastest = min(p50 for _, p50 in timed)
    tied = [(row, p50) for row, p50 in timed if p50 <= fastest * (1 + latency_tie)]
    best, p50 = min(tied, key=lambda pair: (pair[0].bytes, pair[1]))
    others = ""
    if len(tied) > 1:
        others = f", the smallest of {len(tied)} within {100 * latency_tie:g} % of the fastest"
    return report.model_copy(
        update={
            "selected": best.name,
            "reason": (
                f"fastest within {drop:.3f} of float32's test accuracy ({base.accuracy:.4f})"
                f"{others}: {best.name} {best.accuracy:.4f}, p50 {p50:.3f} ms, "
                f"{best.bytes:,} bytes"
            ),
        }
    )
