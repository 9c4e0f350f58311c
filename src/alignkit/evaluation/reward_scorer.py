"""The ``reward-model`` scorer: a Hugging Face sequence-classification reward model.

The model reads the conversation (the tokenizer's chat template where it has one, else
``"User: ...\\nAssistant: ..."``) and its first logit is the reward. Rewards are not rates:
they are reported as a mean with a confidence interval under the dimension ``reward`` (or the
name given, e.g. ``harmless`` for a harmlessness reward model).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignkit.errors import ModelError
from alignkit.evaluation.scorers import Scores
from alignkit.evaluation.suites import EvalItem


class RewardModelScorer:
    """Scores each response with a reward model at ``path`` (local directory or hub id)."""

    name = "reward-model"

    def __init__(
        self,
        path: str | Path,
        dimension: str = "reward",
        batch_size: int = 16,
        device: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from alignkit.models.hf_loading import resolve_device

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                str(path), trust_remote_code=trust_remote_code
            )
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(path), trust_remote_code=trust_remote_code, use_safetensors=None
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load reward model {str(path)!r}: {exc}") from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.dimensions = (dimension,)
        self.measures = {dimension: "mean reward-model score (not a rate)"}
        self.batch_size = batch_size

    def text(self, item: EvalItem, response: str) -> str:
        """The conversation as the reward model reads it."""
        if self.tokenizer.chat_template:
            messages = [
                {"role": "user", "content": item.text},
                {"role": "assistant", "content": response},
            ]
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return f"User: {item.text}\nAssistant: {response}"

    def rewards(self, items: Sequence[EvalItem], responses: Sequence[str]) -> list[float]:
        import torch

        from alignkit.models.hf_padding import no_cache

        texts = [self.text(i, r) for i, r in zip(items, responses, strict=True)]
        out: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                ).to(self.device)
                out += self.model(**batch, **no_cache(self.model)).logits[:, 0].float().tolist()
        return out

    def score(self, items: Sequence[EvalItem], responses: Sequence[str]) -> list[Scores]:
        (dim,) = self.dimensions
        return [{dim: r} for r in self.rewards(items, responses)]
