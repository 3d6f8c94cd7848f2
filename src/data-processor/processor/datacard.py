"""The data card: a short Markdown summary of the processed data with a bar chart."""

from __future__ import annotations

import io

from common import storage
from common.contracts import SPLITS, Stats

DATA_CARD = "data_card.md"
DATA_CARD_CHART = "data_card.png"  # beside the card, which links it by this name


def bar_chart_png(stats: Stats) -> bytes:
    """Stacked bars of items per class and split, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = stats.labels
    figure, axes = plt.subplots(figsize=(max(6.0, 0.5 * len(labels) + 2), 3.6), dpi=100)
    bottom = [0] * len(labels)
    for split, colour in zip(SPLITS, ("#3b6fd8", "#f0a030", "#3aa05a"), strict=True):
        heights = [stats.counts[split][label] for label in labels]
        axes.bar(labels, heights, bottom=bottom, label=split, color=colour)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set_xlabel("class")
    axes.set_ylabel("items")
    axes.set_title(f"{stats.dataset}: items per class and split")
    axes.legend(frameon=False, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    figure.tight_layout()
    buffer = io.BytesIO()
    # No timestamp or version in the metadata: identical data, identical bytes.
    figure.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def data_card(stats: Stats, chart_name: str) -> str:
    """The Markdown card; `chart_name` is the chart's path relative to the card."""
    spec = stats.preprocess
    reasons: dict[str, int] = {}
    for item in stats.rejected:
        reason = item.reason.split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    rows = [
        f"| {label} | "
        + " | ".join(str(stats.counts[split][label]) for split in SPLITS)
        + f" | {sum(stats.counts[split][label] for split in SPLITS)} |"
        for label in stats.labels
    ]
    return "\n".join(
        [
            f"# Data card: {stats.dataset}",
            "",
            f"- Version (data hash): `{stats.data_hash}`",
            f"- Examples: {stats.examples} ({stats.split_sizes()})",
            f"- Images: {spec.image_size}×{spec.image_size} {spec.color_mode}, "
            f"resize `{spec.resize}`; shards compression `{stats.compression}`",
            f"- Rejected: {len(stats.rejected)}"
            + (
                " (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")"
                if reasons
                else ""
            ),
            "",
            f"![items per class and split]({chart_name})",
            "",
            "| class | train | val | test | total |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def write_data_card(stats: Stats, report_dir: str) -> str:
    """Write `data_card.md` and `data_card.png` into `report_dir` (a folder or gs://
    URI); returns the card's path or URI."""
    card = storage.join(report_dir, DATA_CARD)
    storage.write_bytes(storage.join(report_dir, DATA_CARD_CHART), bar_chart_png(stats))
    storage.write_text(card, data_card(stats, DATA_CARD_CHART))
    return card
