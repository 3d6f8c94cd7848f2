"""`trainer optimize` end to end: variants, reports, and the table in W&B."""

from __future__ import annotations

from pathlib import Path

from common.contracts import Optimization
from common.params import PipelineParams
from common.settings import get_settings
from trainer.compress_variants import compressed_variants
from trainer.inputs import RERUN_TRAIN, read_preprocess
from trainer.optimize import optimize
from trainer.optimize_report import table, write_reports
from trainer.tracking import Tracker


def run_optimize(
    model_dir: Path, data: str, out: str, report: str, pipeline: PipelineParams
) -> Optimization:
    """Run the stage: `out` gets the variants, `report` the JSON (and `.md` beside it);
    with tracking on, a W&B run of job type `optimize` gets the table."""
    spec = read_preprocess(str(model_dir), RERUN_TRAIN)
    result = optimize(
        model_dir,
        data,
        out,
        spec,
        pipeline,
        extra_variants=lambda representative: compressed_variants(
            model_dir, data, pipeline, representative
        ),
    )
    write_reports(result, report)
    tracker = Tracker(enabled=pipeline.train.tracking == "wandb", settings=get_settings())
    tracker.start(
        config={"optimize": pipeline.optimize.model_dump(), "data": data}, job_type="optimize"
    )
    try:
        titles, rows = table(result)
        tracker.log_table("optimization", titles, rows)
        tracker.summary({"eligible": [row.name for row in result.variants if row.eligible]})
    finally:
        tracker.finish()
    return result
