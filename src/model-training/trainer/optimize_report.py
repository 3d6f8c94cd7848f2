"""The optimization table for people: markdown, a plot and a W&B table."""

from __future__ import annotations

from common import storage
from common.contracts import Optimization, VariantScores
from trainer.plots import _png

OPTIMIZATION_PNG = "optimization.png"
COLUMNS = (
    "variant",
    "accuracy",
    "macro F1",
    "agreement",
    "bytes",
    "gzip bytes",
    "p50 ms",
    "p95 ms",
    "images/s (batch)",
    "parameters",
    "sparsity",
    "input",
    "eligible",
)


def table_rows(report: Optimization) -> list[list[str | int | float | bool]]:
    """One list per variant, in COLUMNS order (the W&B table and the markdown share it)."""
    return [
        [
            row.name,
            round(row.accuracy, 4),
            round(row.macro_f1, 4),
            round(row.agreement, 4),
            row.bytes,
            row.gzip_bytes,
            round(row.latency_p50_ms, 4),
            round(row.latency_p95_ms, 4),
            round(row.throughput_per_s, 1),
            row.parameters,
            round(row.sparsity, 3),
            row.input_dtype,
            row.eligible,
        ]
        for row in report.variants
    ]


def markdown(report: Optimization) -> str:
    """`reports/optimization.md`: the table, the selected row in bold, and why."""
    lines = [
        "# Model optimization (test split, measured in LiteRT)",
        "",
        f"Selected: **{report.selected}**: {report.reason}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in table_rows(report):
        cells = [str(cell) for cell in row]
        if row[0] == report.selected:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Latency: one image per call, one interpreter thread; throughput: batches of "
        "`optimize.throughput_batch`. Agreement: share of test items predicted as float32 does.",
    ]
    return "\n".join(lines) + "\n"


def plot_png(report: Optimization) -> bytes:
    """Test accuracy against p50 latency, one marker per variant, area ∝ file bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[VariantScores] = report.variants
    largest = max(row.bytes for row in rows)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        axes.scatter(
            row.latency_p50_ms,
            row.accuracy,
            s=1500 * row.bytes / largest,  # area, in points², proportional to the size
            alpha=0.5,
            edgecolors="black" if row.name == report.selected else "none",
            linewidths=2,
            label=f"{row.name} ({row.bytes / 1e3:,.0f} kB)",
        )
    axes.set_xlabel("p50 latency, one image (ms)")
    axes.set_ylabel("test accuracy")
    axes.set_title(f"Variants (marker area ∝ bytes; selected: {report.selected})")
    axes.grid(alpha=0.3)
    # Variants often sit on top of each other: a legend, with equal markers, names them.
    legend = axes.legend(fontsize=8, loc="best")
    for handle in legend.legend_handles:
        handle.set_sizes([40])  # type: ignore[union-attr]
    content = _png(figure)
    plt.close(figure)
    return content


def write_reports(report: Optimization, json_uri: str, plots: str) -> str:
    """Write the report JSON, the markdown beside it and the plot; returns the md's URI."""
    report.write(json_uri)
    md = json_uri[: -len(".json")] + ".md" if json_uri.endswith(".json") else json_uri + ".md"
    storage.write_text(md, markdown(report))
    storage.write_bytes(storage.join(plots, OPTIMIZATION_PNG), plot_png(report))
    return md
