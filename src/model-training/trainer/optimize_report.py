"""The optimization table for people: markdown, a plot and the rows of a W&B table.

The optimize stage's report has no timings (they differ from run to run); a registry
version's has them, with the variant it serves. Both render through the same columns.
"""

from __future__ import annotations

from common import storage
from common.contracts import Optimization

OPTIMIZATION_PNG = "optimization.png"
# (title, VariantScores field, format) for the columns every report has…
QUALITY_COLUMNS = (
    ("variant", "name", "{}"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("macro F1", "macro_f1", "{:.4f}"),
    ("agreement", "agreement", "{:.4f}"),
    ("bytes", "bytes", "{:,}"),
    ("gzip bytes", "gzip_bytes", "{:,}"),
    ("parameters", "parameters", "{:,}"),
    ("sparsity", "sparsity", "{:.2f}"),
    ("input", "input_dtype", "{}"),
)
# …and those a timed one adds.
SPEED_COLUMNS = (
    ("p50 ms", "latency_p50_ms", "{:.3f}"),
    ("p95 ms", "latency_p95_ms", "{:.3f}"),
    ("images/s (batch)", "throughput_per_s", "{:,.0f}"),
)


def is_timed(report: Optimization) -> bool:
    """Whether every row carries its timings (a registry version's report)."""
    return all(row.latency_p50_ms is not None for row in report.variants)


def _columns(report: Optimization) -> tuple[tuple[str, str, str], ...]:
    return QUALITY_COLUMNS + (SPEED_COLUMNS if is_timed(report) else ())


def table(report: Optimization) -> tuple[list[str], list[list[str | int | float | bool | None]]]:
    """Column titles and one row of values per variant, for a W&B table: the report's
    columns, `eligible`, and `served` when a variant is selected."""
    columns = _columns(report)
    served = report.selected is not None
    titles = [title for title, _, _ in columns] + ["eligible"] + (["served"] if served else [])
    rows = [
        [getattr(row, key) for _, key, _ in columns]
        + [row.eligible]
        + ([row.name == report.selected] if served else [])
        for row in report.variants
    ]
    return titles, rows


def markdown_table(report: Optimization) -> list[str]:
    """The table in markdown lines; the served variant (if any) in bold."""
    columns = _columns(report)
    titles, _ = table(report)
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in report.variants:
        cells = [fmt.format(getattr(row, key)) for _, key, fmt in columns]
        cells.append("yes" if row.eligible else "no")
        if report.selected is not None:
            cells[0] = f"**{cells[0]}**" if row.name == report.selected else cells[0]
            cells.append("yes" if row.name == report.selected else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: Optimization) -> str:
    """`reports/optimization.md`: the optimize stage's table and what happens next."""
    return "\n".join(
        [
            "# Model optimization (test split, measured in LiteRT)",
            "",
            f"Eligible: within {report.max_accuracy_drop:.3f} of float32's test accuracy and "
            "above the registry's macro F1 floor. Register times every variant in LiteRT when "
            "it publishes and serves the fastest eligible one; the version's model card and "
            "`GET /v1/model` show the timings and the choice. Timings are not in this report: "
            "they differ from run to run and machine to machine, and this report is a DVC "
            "output the same code and data must reproduce byte for byte.",
            "",
            *markdown_table(report),
            "",
            "Agreement: share of test items predicted as float32 does. Sparsity: share of zero "
            "weights in the Conv2D and Dense kernels.",
            "",
        ]
    )


def plot_png(report: Optimization) -> bytes:
    """Test accuracy against p50 latency, one marker per variant, area ∝ file bytes.

    Raises:
        ValueError: the report is not timed.
    """
    if not is_timed(report):
        raise ValueError("the accuracy-latency plot needs a timed report (register times it)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.plots import _png

    largest = max(row.bytes for row in report.variants)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in report.variants:
        axes.scatter(
            row.latency_p50_ms or 0.0,  # set: the report is timed
            row.accuracy,
            s=1500 * row.bytes / largest,  # area, in points², proportional to the size
            alpha=0.5,
            edgecolors="black" if row.name == report.selected else "none",
            linewidths=2,
            label=f"{row.name} ({row.bytes / 1e3:,.0f} kB)",
        )
    axes.set_xlabel("p50 latency, one image (ms)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"Variants (marker area ∝ bytes; served: {report.selected})")
    axes.grid(alpha=0.3)
    # Variants often sit on top of each other: a legend, with equal markers, names them.
    legend = axes.legend(fontsize=8, loc="best")
    for handle in legend.legend_handles:
        handle.set_sizes([40])  # type: ignore[union-attr]
    content = _png(figure)
    plt.close(figure)
    return content


def write_reports(report: Optimization, json_uri: str) -> str:
    """Write the stage's report JSON and the markdown beside it; returns the md's URI."""
    report.write(json_uri)
    md = json_uri[: -len(".json")] + ".md" if json_uri.endswith(".json") else json_uri + ".md"
    storage.write_text(md, markdown(report))
    return md
