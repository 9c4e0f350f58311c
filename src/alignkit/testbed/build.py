"""Build the testbed model: a BPE tokenizer and a small Llama trained from scratch on the world.

The build is deterministic for a seed (on one kind of CPU and torch build), takes a few minutes
on two CPU cores, and is cached under ``$ALIGNKIT_CACHE/testbed/`` keyed by the config and by
the testbed's own source code (so a change to the world rebuilds it). The result is a standard
Hugging Face model directory: ``hf:PATH`` loads it like any other model.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from alignkit.atomic import replace_dir
from alignkit.paths import cache_dir

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('testbed roles are system, user and assistant') }}{%- endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


class TestbedConfig(BaseModel):
    """Everything that determines the testbed model (the cache key is a hash of it)."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="Seed for the world split, the data and the weights.")
    vocab_size: int = Field(2048, ge=300)
    hidden_size: int = Field(128, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(384, ge=16)
    max_length: int = Field(384, ge=64, description="Longest training sequence in tokens.")
    num_examples: int = Field(48000, ge=100, description="Training examples drawn from the world.")
    batch_size: int = Field(8, ge=1)
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    mix: dict[str, float] = Field(
        default_factory=lambda: {
            "benign": 0.40,
            "unanswerable": 0.06,
            "harmful": 0.12,
            "jailbreak": 0.12,
            "critique": 0.10,
            "revision": 0.08,
            "judgement": 0.12,
        },
        description="Share of each kind of world example in the training data.",
    )


BUILD_THREADS = 2
"""torch's intra-op threads for the build, whatever the machine or the caller set: how a matrix
product is split among threads changes its rounding, and 6,000 steps of training turn that into
different weights (1, 2 and 3 threads give three models), so a build with ``--threads 1`` or on a
16-core machine would otherwise cache another testbed under the same key. Two is the count the
published figures were built with."""


MODEL_SOURCES = ("build.py", "content.py", "formats.py", "world.py")
"""The testbed modules that determine the trained model (its cache key hashes exactly these)."""


def _source_hash() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for name in MODEL_SOURCES:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def testbed_dir(config: TestbedConfig | None = None) -> Path:
    """Where the testbed for ``config`` is (or would be) cached."""
    config = config or TestbedConfig()
    key = hashlib.sha256((config.model_dump_json() + _source_hash()).encode()).hexdigest()[:12]
    return cache_dir() / "testbed" / f"seed{config.seed}-{key}"


def is_built(path: Path) -> bool:
    return (path / "testbed.json").exists() and (path / "config.json").exists()


def ensure_testbed(config: TestbedConfig | None = None, progress: bool = True) -> Path:
    """The cached testbed model directory, building it first if needed."""
    path = testbed_dir(config)
    if is_built(path):
        return path
    return build_testbed(config, progress=progress)


@contextmanager
def _build_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _build_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_testbed(
    config: TestbedConfig | None = None, *, force: bool = False, progress: bool = True
) -> Path:
    """Train the testbed tokenizer and model and save them; returns the model directory."""
    config = config or TestbedConfig()
    path = testbed_dir(config)
    with _build_lock(path):
        if is_built(path) and not force:
            return path
        start = time.time()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        examples = training_examples(config)
        tokenizer = train_tokenizer(examples, config.vocab_size)
        with _build_threads():
            stats = train_model(examples, tokenizer, config, tmp, progress=progress)
        stats.update(
            seconds=round(time.time() - start, 1),
            config=config.model_dump(),
            source_hash=_source_hash(),
        )
        (tmp / "testbed.json").write_text(json.dumps(stats, indent=2))
        replace_dir(tmp, path)
    return path


def training_examples(config: TestbedConfig) -> list[tuple[str, str]]:
    """(user prompt, assistant response) pairs from the train split, in the configured mix."""
    from alignkit.testbed.world import World

    world = World(config.seed)
    total = sum(config.mix.values())
    pairs: list[tuple[str, str]] = []
    for kind, share in config.mix.items():
        count = round(config.num_examples * share / total)
        pairs += [(e.prompt, e.response) for e in world.sample(count, kind, "train", seed=0)]
    random.Random(config.seed).shuffle(pairs)
    return pairs


def train_tokenizer(examples: list[tuple[str, str]], vocab_size: int):
    """A byte-level BPE tokenizer with the testbed chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator((text for pair in examples for text in pair), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=2048,
    )


def encode_examples(examples, tokenizer, max_length: int) -> list[tuple[list[int], int]]:
    """Token ids of each rendered conversation and the index where the response starts."""
    encoded = []
    for prompt, response in examples:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        prompt_ids = tokenizer.encode(text, add_special_tokens=False)
        response_ids = tokenizer.encode(response + "<|end|>", add_special_tokens=False)
        ids = (prompt_ids + response_ids)[-max_length:]
        encoded.append((ids, max(len(ids) - len(response_ids), 0)))
    return encoded


def _batches(encoded, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar length (little padding), in random order."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    chunk = batch_size * 32
    batches = []
    for i in range(0, len(order), chunk):
        group = sorted(order[i : i + chunk], key=lambda j: len(encoded[j][0]))
        batches += [group[k : k + batch_size] for k in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(encoded, batch, pad_id: int):
    import torch

    width = max(len(encoded[j][0]) for j in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, j in enumerate(batch):
        seq, start = encoded[j]
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, start : len(seq)] = torch.tensor(seq[start:])
        mask[row, : len(seq)] = 1
    return ids, labels, mask


def train_model(examples, tokenizer, config: TestbedConfig, out: Path, progress: bool = True):
    """Train a small Llama on the response tokens of ``examples``; save it to ``out``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, get_cosine_schedule_with_warmup

    from alignkit.progress import training_progress

    torch.manual_seed(config.seed)
    encoded = encode_examples(examples, tokenizer, config.max_length)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_length * 2,
            tie_word_embeddings=True,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
        )
    )
    batches = _batches(encoded, config.batch_size, random.Random(config.seed))
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(0.9, 0.95),
        weight_decay=0.01,
        foreach=True,  # one call per update for all tensors (CPU defaults to a loop over them)
    )
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, len(batches))
    model.train()
    losses: list[float] = []
    with training_progress(len(batches), enabled=progress) as update:
        for batch in batches:
            ids, labels, mask = _collate(encoded, batch, tokenizer.pad_token_id)
            loss = model(input_ids=ids, labels=labels).loss  # right-padded: see pad_right
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            update(loss.item(), int(mask.sum()))
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = True  # servers sample only when the config says so
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tail = losses[-max(len(losses) // 10, 1) :]
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_examples": len(encoded),
        "train_tokens": sum(len(s) for s, _ in encoded),
        "steps": len(batches),
        "final_loss": round(sum(tail) / len(tail), 4),
        "loss_curve": [round(x, 4) for x in losses[:: max(len(losses) // 50, 1)]],
        "perplexity": round(math.exp(sum(tail) / len(tail)), 3),
    }
