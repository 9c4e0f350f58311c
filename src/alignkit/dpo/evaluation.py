"""``DPOTrainer.evaluate``: implicit-reward metrics on held-out pairs and KL to the reference.

KL(policy || reference) is estimated on held-out prompts by sampling completions y from the
policy (temperature 1) and averaging log pi(y|x) - log pi_ref(y|x) (the unbiased "k1"
estimator; Schulman 2020, "Approximating KL divergence"), in nats per completion.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList

from alignkit.dpo.forward import SequenceLogps, get_log_probs, get_ref_log_probs
from alignkit.dpo.model_io import eager_layers
from alignkit.dpo.steps import StepResult, pair_margins, preference_step, soft_smoothing
from alignkit.models.base import GenerationConfig
from alignkit.models.hf_padding import pad_token_ids
from alignkit.models.hf_sampling import GumbelSampler
from alignkit.models.sampling import sample_keys


@dataclass
class _Sampled:
    prompt_ids: list[int]
    completion_ids: list[list[int]]


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def reference_model(trainer):
    """The reference for fresh samples: the frozen copy, the adapter-disabled policy, or (full
    fine-tuning with precomputed log-probs) the original weights loaded again from disk."""
    if trainer.reference is not None:
        return trainer.reference, False
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(policy, "disable_adapter"):
        return policy, False
    from alignkit.dpo.model_io import load_policy

    model, _ = load_policy(trainer.config)
    return model.to(trainer.accelerator.device).eval(), True


def sample_completions(
    model,
    prompts: list[list[int]],
    pad_id: int,
    end_ids: set[int],
    max_new_tokens: int = 64,
    seed: int = 0,
) -> list[_Sampled]:
    """Sample one completion per prompt (token ids, ending with the end token if reached).

    Each row draws from its own sample key (seed, the prompt's token ids, its occurrence), as
    the backends do (:mod:`alignkit.models.sampling`), so a prompt's sample, and with it the
    KL estimate, does not depend on which other prompts share the call."""
    device = next(model.parameters()).device
    ids, mask = pad_token_ids(prompts, pad_id, left=True)
    width = ids.shape[1]
    keys = sample_keys([json.dumps(p) for p in prompts], seed)
    sampler = GumbelSampler(GenerationConfig(temperature=1.0), keys, width, device)
    with eager_layers():  # a compiled policy (--compile) would recompile at every step
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,  # the argmax of the Gumbel-perturbed logits is the sample
            logits_processor=LogitsProcessorList([sampler]),
            max_new_tokens=max_new_tokens,
            pad_token_id=pad_id,
            eos_token_id=sorted(end_ids) or None,
        )
    samples = []
    for p, row in zip(prompts, out[:, width:].tolist(), strict=True):
        end = next((i for i, t in enumerate(row) if t in end_ids), len(row) - 1)
        samples.append(_Sampled(p, [row[: end + 1]]))
    return samples


@torch.no_grad()
def estimate_kl(trainer, prompts: list[list[int]]) -> float:
    policy = trainer.accelerator.unwrap_model(trainer.model)
    tok = trainer.tokenizer
    end_ids = {
        i for i in (tok.eos_token_id, policy.generation_config.eos_token_id) if isinstance(i, int)
    }
    was_training = policy.training
    policy.eval()
    samples = sample_completions(
        policy, prompts, trainer.pad_id, end_ids, seed=trainer.config.seed + trainer.step
    )
    reference, loaded = reference_model(trainer)
    gaps = []
    for batch in _batches(samples, trainer.config.batch_size):
        mine = get_log_probs(policy, batch, trainer.pad_id).logps[:, 0]
        ref = get_ref_log_probs(reference, batch, trainer.pad_id).logps[:, 0]
        gaps.append(mine - ref)
    policy.train(was_training)
    if loaded:
        del reference
    return float(torch.cat(gaps).mean())


@torch.no_grad()
def evaluate_preferences(trainer, dataset) -> dict[str, float]:
    """``eval/``-prefixed reward metrics over ``dataset`` and ``eval/kl`` (see module doc)."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    was_training = policy.training
    policy.eval()
    items = [dataset[i] for i in range(len(dataset))]
    reference, loaded = (None, False)
    results = []
    for start in range(0, len(items), trainer.config.batch_size):
        batch = items[start : start + trainer.config.batch_size]
        mine = get_log_probs(policy, batch, trainer.pad_id)
        if trainer.eval_ref_logps is not None and dataset is trainer.eval_dataset:
            k = mine.logps.shape[1]
            ref = SequenceLogps(
                trainer.eval_ref_logps.logps[start : start + len(batch), :k],
                trainer.eval_ref_logps.tokens[start : start + len(batch), :k],
            )
            ref = SequenceLogps(ref.logps.to(mine.logps.device), ref.tokens.to(mine.logps.device))
        else:
            if reference is None:
                reference, loaded = reference_model(trainer)
            ref = get_ref_log_probs(reference, batch, trainer.pad_id)
        smoothing = soft_smoothing(batch, trainer.config)
        margin = pair_margins(batch)
        results.append(
            preference_step(mine, ref, trainer.config, smoothing=smoothing, margin=margin)
        )
    policy.train(was_training)
    metrics = {f"eval/{k}": v for k, v in StepResult.average(results).items() if k != "beta"}
    if trainer.config.kl_samples:
        prompts = [ex.prompt_ids for ex in items[: trainer.config.kl_samples]]
        metrics["eval/kl"] = estimate_kl(trainer, prompts)
    if loaded:
        del reference
    return metrics
