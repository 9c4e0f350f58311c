"""One variant of the DPO benchmark, run in a fresh process by ``dpo_vs_trl.py --variant NAME``.

Each runner trains with one tool and returns a JSON-able dict measured the same way for all:

- ``loop_s``: wall time from the start of the first optimizer step to the end of the last one
  (data loading, logging and progress between steps included; model loading, dataset
  preparation, reference precomputation and the final save excluded);
- ``precompute_s``: wall time of the reference log-prob precomputation (0 when there is none);
- ``tokens``: prompt + completion tokens of every sequence that went through the policy
  (chosen and rejected each count their prompt), counted from the token ids of the examples
  fed to the model, never from a tool's own counter;
- ``peak_mb``: see :class:`PeakMemory`;
- ``losses`` / ``accuracies``: the per-step loss and reward accuracy each tool logs.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

_CLEAR_REFS = "/proc/self/clear_refs"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Peak memory of what happens between :meth:`start` and :meth:`stop`.

    GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at start, i.e. the
    peak of all tensors alive at once (weights of every model, gradients, optimizer state,
    activations). CPU: the kernel's resident-set high-water mark (``VmHWM``), reset at start by
    writing 5 to ``/proc/self/clear_refs``, minus the resident set at start; so imports made
    before start do not count, but every byte the trainer allocates does (models, optimizer
    state, activations, allocator slack). Without ``clear_refs`` a thread samples ``VmRSS``
    every millisecond instead (can miss a spike shorter than that).
    """

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self._sampler: threading.Thread | None = None
        self._sampled_kb = 0
        self._running = False

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return
        self.base_kb = _status_kb("VmRSS")
        try:
            with open(_CLEAR_REFS, "w") as handle:
                handle.write("5")
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "VmRSS sampled every 1 ms"
            self._running = True
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while self._running:
            self._sampled_kb = max(self._sampled_kb, _status_kb("VmRSS"))
            time.sleep(0.001)

    def stop(self) -> dict[str, Any]:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
            return {"peak_mb": peak, "memory_method": "torch.cuda.max_memory_allocated"}
        if self._sampler is not None:
            self._running = False
            self._sampler.join()
            peak_kb = self._sampled_kb
        else:
            peak_kb = _status_kb("VmHWM")
        return {
            "peak_mb": (peak_kb - self.base_kb) / 1024,
            "peak_rss_mb": peak_kb / 1024,
            "base_rss_mb": self.base_kb / 1024,
            "memory_method": self.method,
        }


class StepClock:
    """Start of the first step, end of the last one, and the tokens the steps consumed."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.first: float | None = None
        self.last = 0.0
        self.tokens = 0
        self.tokens_sq = 0
        self.steps = 0

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def begin(self) -> None:
        if self.first is None:
            self._sync()
            self.first = time.perf_counter()

    def end(self, lengths: list[int] = ()) -> None:
        """End of a step that processed sequences of these ``lengths`` (tokens each)."""
        self._sync()
        self.last = time.perf_counter()
        self.tokens += sum(lengths)
        self.tokens_sq += sum(n * n for n in lengths)  # for the attention FLOPs
        self.steps += 1

    @property
    def seconds(self) -> float:
        return self.last - (self.first or self.last)


def _preload_model_class(model_dir: str) -> None:
    """Import the model's modeling module before memory is measured (code is not data)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    AutoModelForCausalLM._model_mapping[type(config)]  # noqa: B018 (imports the module)


def run_alignkit(
    opts: dict[str, Any],
    prefix_sharing: bool = False,
    compile_layers: bool = False,
    attention: str = "auto",
) -> dict[str, Any]:
    """alignkit's DPOTrainer with reference log-probs precomputed (its default); with
    ``prefix_sharing`` each prompt is computed once for chosen and rejected; with
    ``compile_layers`` every decoder layer is compiled (compile time included)."""
    from alignkit.dpo import DPOConfig, DPOTrainer

    _preload_model_class(opts["model_dir"])
    clock, precompute = StepClock(opts["device"]), {"s": 0.0}
    losses: list[float] = []
    accuracies: list[float] = []

    class TimedTrainer(DPOTrainer):
        def prepare_reference(self) -> None:
            start = time.perf_counter()
            super().prepare_reference()
            precompute["s"] += time.perf_counter() - start

        def train_step(self, micro_batches):
            clock.begin()
            metrics = super().train_step(micro_batches)
            examples = [self.train_dataset[i] for batch in micro_batches for i in batch]
            clock.end([len(ex.prompt_ids) + len(c) for ex in examples for c in ex.completion_ids])
            losses.append(metrics["loss"])
            accuracies.append(metrics["rewards/accuracies"])
            return metrics

    memory = PeakMemory(opts["device"])
    memory.start()
    config = DPOConfig(
        data=opts["data"],
        output_dir=opts["output_dir"],
        max_steps=opts["steps"],
        batch_size=opts["batch_size"],
        learning_rate=opts["learning_rate"],
        beta=opts["beta"],
        max_length=opts["max_length"],
        max_prompt_length=opts["max_length"] // 2,
        optimizer="adamw",
        scheduler="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        precision=opts["dtype"],
        gradient_checkpointing=opts["gradient_checkpointing"],
        seed=opts["seed"],
        precompute_ref=True,
        prefix_sharing=prefix_sharing,
        compile=compile_layers,
        attn_implementation=attention,
        kl_samples=0,
        logging_steps=1,
        device=opts["device"],
    )
    trainer = TimedTrainer(f"hf:{opts['model_dir']}", config)
    trainer.train()
    peak = memory.stop()
    return {
        "loop_s": clock.seconds,
        "precompute_s": precompute["s"],
        "tokens": clock.tokens,
        "tokens_sq": clock.tokens_sq,
        "steps": clock.steps,
        "losses": losses,
        "accuracies": accuracies,
        **peak,
    }


def _conversational(path: str) -> list[dict[str, Any]]:
    """The benchmark's string pairs as chat messages, so TRL applies the same chat template."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


def _same_tokens_as_alignkit(trainer, opts: dict[str, Any]) -> bool:
    """True when TRL's tokenized pairs equal alignkit's, id for id (same work for both)."""
    from alignkit.data import DPODataset

    ours = DPODataset.from_file(
        opts["data"],
        trainer.processing_class,
        max_length=opts["max_length"],
        max_prompt_length=opts["max_length"] // 2,
    )
    theirs = trainer.train_dataset
    if len(ours) != len(theirs):
        return False
    for ex, row in zip(ours.items, theirs, strict=True):
        if [ex.prompt_ids, *ex.completion_ids] != [
            row["prompt_ids"],
            row["chosen_ids"],
            row["rejected_ids"],
        ]:
            return False
    return True


def run_trl(opts: dict[str, Any], precompute: bool, liger: bool = False) -> dict[str, Any]:
    """TRL's DPOTrainer: reference forward every step, or reference log-probs precomputed;
    ``liger``: with Liger-Kernel's fused linear DPO loss (``use_liger_kernel``)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    _preload_model_class(opts["model_dir"])
    clock, timing = StepClock(opts["device"]), {"precompute_s": 0.0}

    class TimedTrainer(DPOTrainer):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            start = time.perf_counter()
            result = super()._precompute_ref_logps(dataset, name, batch_size)
            timing["precompute_s"] += time.perf_counter() - start
            return result

        def training_step(self, model, inputs, num_items_in_batch=None):
            # attention_mask row sums are the prompt + completion tokens of each sequence
            lengths.extend(int(n) for n in inputs["attention_mask"].sum(-1))
            return super().training_step(model, inputs, num_items_in_batch)

    lengths: list[int] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end(lengths)
            lengths.clear()

    rows = _conversational(opts["data"])
    memory = PeakMemory(opts["device"])
    memory.start()
    tokenizer = AutoTokenizer.from_pretrained(opts["model_dir"])
    args = DPOConfig(
        output_dir=opts["output_dir"],
        per_device_train_batch_size=opts["batch_size"],
        gradient_accumulation_steps=1,
        max_steps=opts["steps"],
        learning_rate=opts["learning_rate"],
        beta=opts["beta"],
        loss_type=["sigmoid"],
        max_length=opts["max_length"],
        optim="adamw_torch",
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=opts["dtype"] == "bf16",
        gradient_checkpointing=opts["gradient_checkpointing"],
        seed=opts["seed"],
        precompute_ref_log_probs=precompute,
        use_liger_kernel=liger,
        precompute_ref_batch_size=2 * opts["batch_size"],  # what alignkit uses
        use_cpu=opts["device"] == "cpu",
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = TimedTrainer(
        model=opts["model_dir"],
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    peak = memory.stop()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "loop_s": clock.seconds,
        "precompute_s": timing["precompute_s"],
        "tokens": clock.tokens,
        "tokens_sq": clock.tokens_sq,
        "steps": clock.steps,
        "losses": [float(e["loss"]) for e in logs],
        "accuracies": [float(e["rewards/accuracies"]) for e in logs],
        "same_tokens_as_alignkit": _same_tokens_as_alignkit(trainer, opts),
        **peak,
    }


RUNNERS = {
    "alignkit": run_alignkit,
    "alignkit-shared": lambda opts: run_alignkit(opts, prefix_sharing=True),
    "alignkit-shared-flex": lambda opts: run_alignkit(
        opts, prefix_sharing=True, attention="flex_attention"
    ),
    "alignkit-compile": lambda opts: run_alignkit(opts, compile_layers=True),
    "trl": lambda opts: run_trl(opts, precompute=False),
    "trl-precompute": lambda opts: run_trl(opts, precompute=True),
    "trl-liger": lambda opts: run_trl(opts, precompute=True, liger=True),
}


def run_variant(name: str, opts: dict[str, Any], result_path: str) -> None:
    """Run one variant (in this fresh process) and write its measurements as JSON."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(opts["threads"])
    torch.manual_seed(opts["seed"])
    result = RUNNERS[name](opts)
    result.update(variant=name, device=opts["device"], dtype=opts["dtype"])
    Path(result_path).write_text(json.dumps(result))
