"""Value models learned from pairwise value records: reward models and Safe RLHF cost models.

A value model reads a conversation (the prompt as the user turn, the response as the assistant
turn, rendered with the tokenizer's chat template) and returns one scalar: a *reward* (higher is
better on one value dimension: helpful, harmless or honest) or a *cost* (above zero means
unsafe). The backbone is any Hugging Face model loaded with
``AutoModelForSequenceClassification`` and one label (a causal-LM checkpoint gets a fresh score
head that pools the last non-pad token), trained fully or through a LoRA adapter.

    config = ValueModelConfig(model="testbed", kind="reward", dimension="harmless")
    model = train_value_model(config, train_records, eval_records)
    model.score(["How do I pick a lock?"], ["I can't help with that."])
    evaluate_pairwise(model, eval_records)   # RewardBench-style accuracy per category
    model.save("runs/rm-harmless"); ValueModel.load("runs/rm-harmless")

Records are *pairwise value records* (``prompt``, ``chosen``, ``rejected``, ``dimension``,
``category``, ``chosen_safe``, ``rejected_safe``, ``source``); ``chosen`` is the better response
on ``dimension`` (for a cost model: the safer one). An optional numeric ``margin`` key gives the
pair its own Bradley-Terry margin instead of ``config.margin``. The saved directory is a plain
sequence-classification checkpoint (a LoRA adapter is merged on save), so anything that reads
reward models (e.g. the ``reward-model`` scorer of the evaluation) can use it. Training
(:func:`~alignkit.safety.value_training.train_value_model`, importable from here too) runs in
one process or several (``torchrun`` / ``accelerate launch``, data parallel or FSDP2).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from alignkit._lazy import lazy_exports
from alignkit.atomic import move_files_into, write_text
from alignkit.errors import DataError, ModelError
from alignkit.models.base import ModelSpec
from alignkit.safety.value_config import Kind, ValueModelConfig

METADATA_FILE = "alignkit_value_model.json"
_HEAD_NAMES = ("score", "classifier", "v_head")  # value heads of common architectures

# training lives in value_training (which imports this module); still importable from here
__getattr__ = lazy_exports(
    __name__,
    {name: "alignkit.safety.value_training" for name in ("pair_loss", "train_value_model")},
)


# ---------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------


def _where(record: Any, index: int) -> str:
    source = record.get("source") if isinstance(record, Mapping) else None
    return str(source) if source else f"record {index + 1}"


def check_records(
    records: Sequence[Mapping[str, Any]], dimension: str | None = None, what: str = "training"
) -> list[Mapping[str, Any]]:
    """The records of ``dimension`` (all when None) after checking their fields.

    Raises :class:`DataError` naming the record (its ``source``) for a missing or mistyped
    field, and when no record of the dimension is left.
    """
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise DataError(f"{what} record {i + 1}: expected a dict, got {type(record).__name__}")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(record.get(key), str):
                raise DataError(f"{_where(record, i)}: field {key!r} must be a string")
        for key in ("chosen_safe", "rejected_safe"):
            if not isinstance(record.get(key), bool | None):
                raise DataError(f"{_where(record, i)}: field {key!r} must be true, false or null")
        margin = record.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)):
            raise DataError(f"{_where(record, i)}: field 'margin' must be a number")
    kept = [r for r in records if dimension is None or r.get("dimension") == dimension]
    if not kept:
        found = sorted({str(r.get("dimension")) for r in records})
        raise DataError(
            f"no {what} records of dimension {dimension!r} among {len(records)} "
            f"(dimensions found: {', '.join(found) or 'none'})"
        )
    return kept


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class ValueModel:
    """A scalar value model (reward or cost) over (prompt, response) conversations."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        kind: Kind = "reward",
        dimension: str | None = None,
        max_length: int = 512,
        batch_size: int = 16,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind
        self.dimension = dimension
        self.max_length = max_length
        self.batch_size = batch_size
        self.pad_id = _ensure_pad(model, tokenizer)
        self.history: list[dict[str, float]] = []  # per optimizer step, filled by training
        self.metrics: dict[str, Any] = {}  # held-out evaluation, filled by training

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """Token ids of each conversation (chat template where the tokenizer has one), cut
        to the last ``max_length`` tokens so the response is kept."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self.tokenizer.chat_template:
            conversations = [
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                for p, r in zip(prompts, responses, strict=True)
            ]
            ids = self.tokenizer.apply_chat_template(
                conversations, tokenize=True, return_dict=False
            )
        else:
            texts = [f"User: {p}\nAssistant: {r}" for p, r in zip(prompts, responses, strict=True)]
            ids = self.tokenizer(texts).input_ids
        return [list(row[-self.max_length :]) for row in ids]

    def forward(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[N]`` scores of tokenised conversations in one right-padded forward pass.

        Right padding keeps every row's real tokens at the start, so no row is fully masked
        (see :func:`alignkit.dpo.forward.get_log_probs` for why left padding is avoided in
        training forwards), and the causal model needs no mask for them
        (:func:`~alignkit.models.hf_padding.pad_right`); the head pools each row's last
        non-pad token, found from the ids.
        """
        from alignkit.models.hf_padding import no_cache, pad_right

        ids = pad_right([list(row) for row in rows], self.pad_id).to(self.device)
        out = self.model(input_ids=ids, **no_cache(self.model))
        return out.logits[:, 0].float()

    @torch.no_grad()
    def score(
        self, prompts: Sequence[str], responses: Sequence[str], batch_size: int | None = None
    ) -> list[float]:
        """The value of each (prompt, response): a reward, or a cost (> 0 means unsafe)."""
        size = batch_size or self.batch_size
        was_training = self.model.training
        self.model.eval()
        scores: list[float] = []
        try:
            for start in range(0, len(prompts), size):
                rows = self.encode(prompts[start : start + size], responses[start : start + size])
                scores += self.forward(rows).tolist()
        finally:
            self.model.train(was_training)
        return scores

    def preference(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """Higher is better for either kind: the reward, or minus the cost."""
        sign = -1.0 if self.kind == "cost" else 1.0
        return [sign * s for s in self.score(prompts, responses)]

    def save(self, directory: str | Path, weights: dict[str, Any] | None = None) -> Path:
        """Save as a sequence-classification checkpoint (safetensors), the tokenizer and
        ``alignkit_value_model.json``; a LoRA adapter is merged into the backbone first. Each
        file appears whole, and the metadata file, which :meth:`load` needs, comes last: a
        save killed half way leaves a folder that is refused, never half a model.

        ``weights``: the whole state dict where the model cannot give it itself (a model sharded
        under FSDP: :func:`~alignkit.dpo.sharding.gather_weights` gathers it)."""
        from alignkit.dpo.sharding import is_adapter, merged

        directory = Path(directory)
        model = self.model
        if is_adapter(model):
            sharded = weights is not None
            model, weights = merged(model, weights)
            if not sharded:
                self.model = model  # peft merged it in place
        directory.mkdir(parents=True, exist_ok=True)
        (directory / METADATA_FILE).unlink(missing_ok=True)  # not a value model until the end
        tmp = directory / f".saving.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
            self.tokenizer.save_pretrained(tmp)
            move_files_into(tmp, directory)  # each file whole; other files stay
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        meta = {"kind": self.kind, "dimension": self.dimension, "max_length": self.max_length}
        write_text(directory / METADATA_FILE, json.dumps(meta, indent=2) + "\n")  # last
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, device: str = "auto", trust_remote_code: bool = False
    ) -> ValueModel:
        """A value model saved by :meth:`save`."""
        directory = Path(directory)
        meta_path = directory / METADATA_FILE
        if not meta_path.is_file():
            raise ModelError(f"{directory} is not a saved value model: no {METADATA_FILE}")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ModelError(f"{meta_path}: not valid JSON ({exc.msg})") from None
        model, tokenizer = _load_hf(str(directory), True, trust_remote_code, device)
        return cls(
            model.eval(),
            tokenizer,
            kind=meta.get("kind", "reward"),
            dimension=meta.get("dimension"),
            max_length=int(meta.get("max_length", 512)),
        )


def _ensure_pad(model: torch.nn.Module, tokenizer: Any) -> int:
    """Give the tokenizer a pad token if it has none and tell the model config about it, so
    the classification head pools the last non-pad token of each row."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token_id is None:
        raise ModelError("the tokenizer has no pad, end-of-sequence or unknown token to pad with")
    config = getattr(model, "config", None)
    if config is not None:
        config.pad_token_id = tokenizer.pad_token_id
    return int(tokenizer.pad_token_id)


def _load_hf(
    path: str, local_only: bool, trust_remote_code: bool, device: str, fresh_head: bool = False
):
    """``(model, tokenizer)``: a one-label sequence-classification model from ``path``.

    ``fresh_head``: the checkpoint is a backbone without a value head, so the report that the
    head was newly initialised is expected and not shown.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from alignkit.models.hf_loading import resolve_device

    verbosity = hf_logging.get_verbosity()
    if fresh_head:
        hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=local_only, trust_remote_code=trust_remote_code
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=1,
            dtype=torch.float32,
            local_files_only=local_only,
            trust_remote_code=trust_remote_code,
            use_safetensors=None,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ModelError(f"cannot load {path!r} as a value model: {first.strip()}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.to(resolve_device(device)), tokenizer


def load_backbone(config: ValueModelConfig) -> ValueModel:
    """An untrained value model for ``config``: the backbone with a fresh one-label head (its
    initialisation seeded by ``config.seed``), wrapped in a LoRA adapter when ``config.lora``."""
    from alignkit.models.hf_loading import resolve_source

    spec = ModelSpec.parse(config.model)
    if spec.kind == "openai":
        raise ModelError(f"{config.model}: a value model trains weights; use hf:PATH or testbed")
    if spec.kind == "testbed":
        from alignkit.testbed import ensure_testbed

        spec = ModelSpec(kind="hf", path=str(ensure_testbed(progress=False)))
    if spec.adapter:
        raise ModelError(
            f"{config.model}: value models start from a full checkpoint; merge the adapter "
            "into its base model first"
        )
    path, local_only = resolve_source(spec.path or "", config.trust_remote_code)
    torch.manual_seed(config.seed)
    fresh = not (Path(path) / METADATA_FILE).is_file()  # a saved value model has its head
    model, tokenizer = _load_hf(path, local_only, config.trust_remote_code, config.device, fresh)
    value_model = ValueModel(
        model, tokenizer, config.kind, config.dimension, config.max_length, config.batch_size
    )
    if config.lora:
        value_model.model = _with_lora(model, config)
    return value_model


def _with_lora(model: torch.nn.Module, config: ValueModelConfig) -> torch.nn.Module:
    """``model`` with a new LoRA adapter; its value head is fully trained and saved with it."""
    from peft import LoraConfig, TaskType, get_peft_model

    heads = [
        name for name in _HEAD_NAMES if isinstance(getattr(model, name, None), torch.nn.Module)
    ]
    if not heads:
        raise ModelError(
            f"{type(model).__name__} has no value head named {', '.join(_HEAD_NAMES)}; "
            "train it without LoRA"
        )
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules or "all-linear",
        modules_to_save=heads,
    )
    return get_peft_model(model, lora)


# ---------------------------------------------------------------------------------------------
# Evaluation (training: alignkit.safety.value_training)
# ---------------------------------------------------------------------------------------------


def evaluate_pairwise(
    value_model: ValueModel, records: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """RewardBench-style pairwise accuracy: the share of pairs whose chosen response the model
    prefers (higher reward, or lower cost; ties are wrong), overall and per category, with
    counts. For a cost model also the sign accuracy: cost > 0 exactly for the responses
    flagged unsafe, over the responses whose flag is known. Every record given is evaluated,
    whatever its dimension."""
    records = check_records(records, None, "eval")
    prompts = [r["prompt"] for r in records]
    chosen = value_model.score(prompts, [r["chosen"] for r in records])
    rejected = value_model.score(prompts, [r["rejected"] for r in records])
    sign = -1.0 if value_model.kind == "cost" else 1.0
    correct = [sign * (c - r) > 0 for c, r in zip(chosen, rejected, strict=True)]
    by_category: dict[str, list[bool]] = defaultdict(list)
    for record, ok in zip(records, correct, strict=True):
        by_category[str(record.get("category") or "none")].append(ok)
    result: dict[str, Any] = {
        "accuracy": sum(correct) / len(correct),
        "n": len(correct),
        "categories": {
            name: {"accuracy": sum(oks) / len(oks), "n": len(oks)}
            for name, oks in sorted(by_category.items())
        },
    }
    if value_model.kind == "cost":
        flagged = [
            (score, safe)
            for record, pair in zip(records, zip(chosen, rejected, strict=True), strict=True)
            for score, safe in zip(
                pair, (record.get("chosen_safe"), record.get("rejected_safe")), strict=True
            )
            if safe is not None
        ]
        hits = [(score > 0) == (not safe) for score, safe in flagged]
        result["sign_accuracy"] = sum(hits) / len(hits) if hits else float("nan")
        result["sign_n"] = len(hits)
    return result
