"""Direct Preference Optimization and its family (IPO, cDPO, rDPO, SLiC, SimPO, RPO,
Plackett-Luce ranked DPO, KL-constrained DPO, beta-DPO), a trainer and a pipeline.

Names are imported on first use, so ``import alignkit.dpo.config`` (the CLI does) stays free
of torch.
"""

from __future__ import annotations

from alignkit._lazy import lazy_exports

_EXPORTS = {
    "AdaptiveDPO": "adaptive",
    "DPOConfig": "config",
    "SequenceLogps": "forward",
    "get_log_probs": "forward",
    "get_ref_log_probs": "forward",
    "LOSSES": "losses",
    "PreferenceLogps": "losses",
    "RankedLogps": "losses",
    "compute_loss": "losses",
    "compute_ranked_loss": "losses",
    "dpo_loss": "losses",
    "ranked_loss": "losses",
    "DPOPipeline": "pipeline",
    "PipelineResult": "pipeline",
    "DPOTrainer": "trainer",
    "TrainingError": "trainer",
}
__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
