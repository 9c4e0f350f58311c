"""The whole loop: red team -> constitutional critique and revision -> AI feedback ->
safety-constrained DPO -> evaluation -> report, in one resumable run directory.

    from alignkit.pipeline import AlignmentPipeline, PipelineConfig
    result = AlignmentPipeline(PipelineConfig(model="testbed", output_dir="runs/p")).run()
    result.change["harmful_compliance"]   # {"before": 0.7, "after": 0.2, "diff": ..., ...}

Names are imported on first use, so importing the package loads no model code.
"""

from __future__ import annotations

from alignkit._lazy import lazy_exports

_NAMES = {
    "AlignmentPipeline": "runner",
    "PipelineResult": "runner",
    "PipelineConfig": "config",
    "DemoConfig": "config",
    "STAGES": "config",
    "PipelineReport": "report",
    "write_report": "report",
    "headline": "headline",
}


__getattr__ = lazy_exports(__name__, _NAMES)
