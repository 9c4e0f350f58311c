"""``DPOTrainer``: preference optimisation of any Hugging Face causal LM.

One readable recipe over small parts: data from :mod:`alignkit.data`, log-probs from
:mod:`alignkit.dpo.forward`, losses from the :mod:`alignkit.dpo.losses` registry, the
reference from :mod:`alignkit.dpo.reference`, checkpoints from :mod:`alignkit.dpo.checkpoint`.
Training runs unchanged on one CPU, one GPU, or many under ``accelerate launch``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from alignkit.atomic import check_writable_dir, replace_dir
from alignkit.dpo.batching import epoch_batches
from alignkit.dpo.checkpoint import (
    latest_checkpoint,
    load_state,
    save_checkpoint,
    set_rng_state,
    trim_metrics,
)
from alignkit.dpo.config import DPOConfig
from alignkit.dpo.forward import SequenceLogps, get_log_probs, get_ref_log_probs
from alignkit.dpo.model_io import (
    compile_layers,
    load_policy,
    load_weights,
    save_weights,
    with_adapter,
)
from alignkit.dpo.outputs import run_settings, settings_changes
from alignkit.dpo.reference import precompute_reference
from alignkit.dpo.sharding import (
    check_engine,
    gather_optimizer,
    gather_weights,
    is_adapter,
    load_optimizer,
    merged,
    reset_accelerate_state,
    shard_reference,
    weight_loader,
)
from alignkit.dpo.steps import StepResult, pair_margins, preference_step, soft_smoothing
from alignkit.errors import AlignkitError, ConfigError
from alignkit.tracking import Tracking, remove_tracking

NOT_TRACKED = {"resume", "overwrite", "report_to", "tensorboard"}  # bookkeeping, not settings


def preference_dataset(config: DPOConfig, path, tokenizer):
    """The tokenized preference data at ``path`` with ``config``'s lengths, bad-record rule and
    PKU-SafeRLHF preference."""
    from alignkit.data import DPODataset

    return DPODataset.from_file(
        path,
        tokenizer,
        max_length=config.max_length,
        max_prompt_length=config.prompt_limit,
        truncation_mode=config.truncation_mode,
        on_bad_record=config.on_bad_record,
        pku_preference=config.pku_preference,
    )


class TrainingError(AlignkitError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""

    exit_code = 1


class DPOTrainer:
    """Train a policy on preference data with DPO or any loss of the registry.

    ``DPOTrainer("hf:./model", DPOConfig(data="prefs.jsonl", loss_type="ipo"))`` or, with
    objects in memory, ``DPOTrainer(model=..., tokenizer=..., train_dataset=...)``.
    """

    def __init__(
        self,
        model: str | Any | None = None,
        config: DPOConfig | None = None,
        *,
        tokenizer=None,
        train_dataset=None,
        eval_dataset=None,
        **overrides,
    ) -> None:
        base = config or DPOConfig()
        if isinstance(model, str):
            overrides["model"] = model
        self.config = DPOConfig.model_validate({**base.model_dump(), **overrides})
        cfg = self.config  # validated: the loss registry checked every loss option
        # accelerate keeps one global state per process; let a later trainer in the same
        # process choose its own precision (the process group itself is kept)
        reset_accelerate_state()
        self.accelerator = Accelerator(
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            mixed_precision="bf16" if cfg.precision == "bf16" else "no",
            cpu=cfg.device == "cpu",
        )
        check_engine(self.accelerator)
        set_seed(cfg.seed)
        self.output_dir = Path(cfg.output_dir)
        check_writable_dir(self.output_dir)  # fails now, not after loading the model
        if model is None or isinstance(model, str):
            model, tokenizer = load_policy(cfg)
        elif tokenizer is None:
            raise ConfigError("pass tokenizer= with a model object")
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.model = self._with_adapter(model)
        self.train_dataset = train_dataset if train_dataset is not None else self._dataset(cfg.data)
        self._check_data(self.train_dataset)
        self.eval_dataset = (
            eval_dataset
            if eval_dataset is not None
            else self._dataset(cfg.eval_data, required=False)
        )
        if self.eval_dataset is not None:
            self._check_data(self.eval_dataset)
        self.reference = None if (cfg.lora or cfg.precompute_ref) else self._frozen_copy()
        self.adaptive = self._adaptive()
        self.step = 0
        self._epoch: tuple[int, list[list[int]]] = (-1, [])
        self.ref_logps: SequenceLogps | None = None
        self.eval_ref_logps: SequenceLogps | None = None
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.tracking = Tracking([], self.output_dir, "dpo")  # opened by train()
        self.tracking_name = "dpo"  # the run's name in the trackers
        self.keep_tracking = False  # True: a fresh start keeps the tracker logs (DPOPipeline's SFT)
        self._settings: dict[str, Any] | None = None  # run_settings, kept in every checkpoint
        self._setup_optimisation()

    # ------------------------------------------------------------------------------ set-up

    def _dataset(self, path, required: bool = True):
        if path is None:
            if required:
                raise ConfigError("no training data: set data (--data FILE)")
            return None
        return preference_dataset(self.config, path, self.tokenizer)

    def _check_data(self, data) -> None:
        """Ranked lists, soft labels and margins only where the loss is declared to take them
        (:func:`~alignkit.dpo.registry.check_data`): one ConfigError before any training."""
        from alignkit.dpo.registry import check_data, get_loss

        cfg = self.config
        items = (data[i] for i in range(len(data)))
        check_data(get_loss(cfg.loss_type), items, use_soft_labels=cfg.use_soft_labels)

    def _with_adapter(self, model):
        return with_adapter(model, self.config)

    def _frozen_copy(self):
        reference = copy.deepcopy(self.model).eval()
        reference.requires_grad_(False)
        return reference

    def _adaptive(self):
        if not self.config.adaptive_beta:
            return None
        from alignkit.dpo.adaptive import AdaptiveDPO

        return AdaptiveDPO(
            beta=self.config.beta,
            alpha=self.config.adaptive_alpha,
            filter_fraction=self.config.adaptive_filter,
            seed=self.config.seed,
        )

    def _setup_optimisation(self) -> None:
        cfg, acc = self.config, self.accelerator
        self.global_batch = cfg.batch_size * acc.num_processes
        per_epoch = math.ceil(len(self.train_dataset) / self.global_batch)
        self.micro_per_epoch = per_epoch
        self.total_steps = cfg.max_steps or max(
            1, math.ceil(cfg.epochs * per_epoch / cfg.gradient_accumulation_steps)
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.RMSprop
        self.optimizer = optim(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            "constant_with_warmup" if cfg.scheduler == "constant" else cfg.scheduler,
            self.optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_training_steps=self.total_steps,
        )
        # The scheduler stays unprepared: accelerate would step it once per process, which
        # decays the learning rate num_processes times too fast for our per-process batches.
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        if cfg.compile:
            compile_layers(self.model)
        if self.reference is not None:
            self.reference = shard_reference(acc, self.reference)

    # ----------------------------------------------------------------------- reference

    def prepare_reference(self) -> None:
        """Precompute reference log-probs of the training data (from the disk cache if there)."""
        if not self.config.precompute_ref or self.ref_logps is not None:
            return
        model = self.accelerator.unwrap_model(self.model)

        def compute(dataset) -> SequenceLogps:
            items = [dataset[i] for i in range(len(dataset))]
            return precompute_reference(
                model, items, batch_size=self.config.batch_size * 2, pad_id=self.pad_id,
                share_prompt=self.config.prefix_sharing,
            )  # fmt: skip

        self.ref_logps = compute(self.train_dataset)
        if self.eval_dataset is not None:
            self.eval_ref_logps = compute(self.eval_dataset)

    def get_ref_log_probs(self, indices: list[int], examples) -> SequenceLogps:
        """Reference log-probs for these training examples (precomputed, or computed now)."""
        if self.ref_logps is not None:
            k = max(len(ex.completion_ids) for ex in examples)
            device = self.accelerator.device  # (a blocking copy would wait for the forward)
            return SequenceLogps(
                self.ref_logps.logps[indices, :k].to(device, non_blocking=True),
                self.ref_logps.tokens[indices, :k].to(device, non_blocking=True),
            )
        reference = self.reference or self.accelerator.unwrap_model(self.model)
        return get_ref_log_probs(reference, examples, self.pad_id, self.config.prefix_sharing)

    # --------------------------------------------------------------------------- steps

    def train_step(self, micro_batches: list[list[int]]) -> dict[str, float]:
        """One optimizer step over ``micro_batches`` (lists of training-example indices)."""
        cfg, acc = self.config, self.accelerator
        self.model.train()
        results: list[StepResult] = []
        for indices in micro_batches:
            mine = indices[acc.process_index :: acc.num_processes]
            examples = [self.train_dataset[i] for i in mine]
            with acc.accumulate(self.model), acc.autocast():
                policy = get_log_probs(
                    self.model, examples, self.pad_id, share_prompt=cfg.prefix_sharing
                )
                gather = acc.gather if acc.num_processes > 1 else None
                result = preference_step(
                    policy,
                    self.get_ref_log_probs(mine, examples),
                    cfg,
                    self.adaptive,
                    gather=gather,
                    rank=acc.process_index,
                    smoothing=soft_smoothing(examples, cfg),
                    margin=pair_margins(examples),
                )
                acc.backward(result.loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    result.metrics["grad_norm"] = norm.detach() if torch.is_tensor(norm) else norm
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            results.append(result)
        # The step's one read from the device, after its updates are queued: every metric of
        # every micro-batch (sorted names: the same order in every process) and the losses
        # trained on, averaged over the processes, which all see a non-finite loss and stop.
        keys, values = StepResult.stack(results, acc.device)
        trained = torch.stack([r.loss.detach().float() for r in results]).mean()
        *values, loss = acc.reduce(torch.cat([values, trained.reshape(1)]), "mean").tolist()
        if not math.isfinite(loss):
            self._diverged(loss)
        metrics = dict(zip(keys, values, strict=True))
        self.step += 1
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _diverged(self, loss: float) -> None:
        last = latest_checkpoint(self.output_dir)
        where = f"; the last good checkpoint is {last}" if last else "; no checkpoint was saved"
        raise TrainingError(
            f"the loss became {loss} at step {self.step + 1}{where}. Lower the learning "
            "rate or beta, or check the data for empty or extreme completions."
        )

    # --------------------------------------------------------------------------- train

    def train(self, until: int | None = None) -> dict[str, float]:
        """Train to ``max_steps`` (or ``epochs``), checkpointing, logging and evaluating.

        With ``resume`` it continues from the last checkpoint of ``output_dir`` (one of a run
        with another total or other settings is refused); otherwise, or when there is no
        checkpoint, it starts over and removes an earlier run's checkpoints and metrics there.
        ``until``: stop after that step of the run (its learning-rate schedule is the whole
        run's), with a checkpoint there, so that a resume continues the same run; method
        selection trains its trials this way."""
        cfg, acc = self.config, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._settings = run_settings(cfg)
        self.prepare_reference()  # before resuming: the reference is the untrained policy
        if not (cfg.resume and self.resume()):
            self._start_over()
        settings = cfg.model_dump(mode="json", exclude=NOT_TRACKED)
        self.tracking = Tracking(
            cfg.report_to, self.output_dir, self.tracking_name, settings,
            enabled=acc.is_main_process,
        )  # fmt: skip
        try:
            return self._train(until)
        finally:
            self.tracking.finish()

    def _train(self, until: int | None) -> dict[str, float]:
        from alignkit.progress import make_progress

        cfg, acc = self.config, self.accelerator
        ga = cfg.gradient_accumulation_steps
        start, last = time.time(), {}
        tokens = 0
        show = acc.is_main_process
        with make_progress() as bar:
            task = bar.add_task(
                "dpo", total=self.total_steps, completed=self.step, info="", visible=show
            )
            stop = self.total_steps if until is None else min(until, self.total_steps)
            while self.step < stop:
                micro = [self._micro_batch(self.step * ga + j) for j in range(ga)]
                last = self.train_step(micro)
                tokens += sum(self._tokens(i) for batch in micro for i in batch)
                last["tokens_per_second"] = tokens / max(time.time() - start, 1e-9)
                bar.update(
                    task,
                    advance=1,
                    info=(
                        f"loss {last['loss']:.3f} | acc {last['rewards/accuracies']:.2f} | "
                        f"{last['tokens_per_second']:,.0f} tok/s"
                    ),
                )
                if self.step % cfg.logging_steps == 0:
                    self.log(last)
                if cfg.eval_steps and self.step % cfg.eval_steps == 0:
                    self.log(self.evaluate())
                if cfg.save_steps and self.step % cfg.save_steps == 0:
                    self.save_checkpoint()
        if self.step < self.total_steps:  # stopped at ``until``: the run goes on later
            self.save_checkpoint()
            return last
        final = self.evaluate()
        self.log(final)
        self.save_checkpoint()
        return {**last, **final}

    def _start_over(self) -> None:
        """Remove the checkpoints, metrics and tracker logs of an earlier run in
        ``output_dir``: a fresh run must not append to its metrics, nor have its own checkpoints
        rotated out in favour of the earlier run's later steps (which a resume would then load).
        The CLI refuses such a directory unless --overwrite; other files there are kept, and
        the tracker logs too with ``keep_tracking`` (DPOPipeline clears its directory itself,
        and the logs of its SFT stage belong to the run)."""
        if self.accelerator.is_main_process:
            shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)
            if not self.keep_tracking:
                remove_tracking(self.output_dir)
            self.metrics_path.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def _micro_batch(self, index: int) -> list[int]:
        epoch, position = divmod(index, self.micro_per_epoch)
        if self._epoch[0] != epoch:
            lengths = [self._tokens(i) for i in range(len(self.train_dataset))]
            self._epoch = (
                epoch,
                epoch_batches(lengths, self.global_batch, self.config.seed, epoch),
            )
        return self._epoch[1][position]

    def _tokens(self, index: int) -> int:
        ex = self.train_dataset[index]
        return sum(len(ex.prompt_ids) + len(c) for c in ex.completion_ids)

    def log(self, metrics: dict[str, float]) -> None:
        """Append a row to ``metrics.jsonl`` and to the trackers (``report_to``); main process
        only."""
        if not metrics or not self.accelerator.is_main_process:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps({"step": self.step, **metrics}) + "\n")
        self.tracking.log(metrics, self.step)

    # ------------------------------------------------------------------------ evaluate

    @torch.no_grad()
    def evaluate(self, dataset=None) -> dict[str, float]:
        """Reward metrics on held-out pairs and an estimate of KL(policy || reference)."""
        from alignkit.dpo.evaluation import evaluate_preferences

        dataset = dataset if dataset is not None else self.eval_dataset
        if dataset is None:
            return {}
        return evaluate_preferences(self, dataset)

    # ---------------------------------------------------------------------- persistence

    def save_checkpoint(self) -> Path | None:
        acc = self.accelerator
        acc.wait_for_everyone()
        adapter = is_adapter(acc.unwrap_model(self.model))
        weights = gather_weights(acc, self.model, adapter)  # every process, under FSDP
        optimizer = gather_optimizer(acc, self.model, self.optimizer)
        if not acc.is_main_process:
            return None
        state = {
            "optimizer": optimizer,
            "scheduler": self.scheduler.state_dict(),
            "adaptive": self.adaptive.state_dict() if self.adaptive else None,
            "run": {"total_steps": self.total_steps, "settings": self._settings},
        }
        model = acc.unwrap_model(self.model)
        return save_checkpoint(
            self.output_dir, self.step, lambda d: save_weights(model, d, weights), state
        )

    def resume(self) -> bool:
        """Load the last checkpoint of ``output_dir``; False if there is none. A checkpoint of a
        run with another total or other settings is refused (ConfigError), as it would mix two
        runs."""
        checkpoint = latest_checkpoint(self.output_dir)
        if checkpoint is None:
            return False
        state = load_state(checkpoint)
        self._check_resumable(checkpoint, state)
        acc = self.accelerator
        load_weights(acc.unwrap_model(self.model), checkpoint, weight_loader(acc, self.model))
        load_optimizer(acc, self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.adaptive and state.get("adaptive"):
            self.adaptive.load_state_dict(state["adaptive"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        trim_metrics(self.metrics_path, self.step)
        return True

    def _check_resumable(self, checkpoint: Path, state: dict[str, Any]) -> None:
        run = state.get("run") or {}  # absent in checkpoints of older alignkit versions
        total, step = run.get("total_steps"), state["step"]
        if (total is not None and total != self.total_steps) or step > self.total_steps:
            theirs = f"{total} steps" if total is not None else f"at least {step} steps"
            raise ConfigError(
                f"cannot resume from {checkpoint}: its run trains {theirs}, this one "
                f"{self.total_steps} (max_steps, epochs, batch size or processes differ); resume "
                "with the same settings, or use another output_dir"
            )
        if self._settings is None:
            self._settings = run_settings(self.config)
        changes = settings_changes(run.get("settings") or {}, self._settings)
        if changes:
            raise ConfigError(
                f"cannot resume from {checkpoint}: its run has other settings "
                f"({'; '.join(changes)}); resume with the same settings, or use another output_dir"
            )

    def save_model(self, path: str | Path | None = None, merge_lora: bool = False) -> Path:
        """Write the policy in standard Hugging Face format (LoRA: the adapter, or merged).

        The model is written under a temporary name and renamed into place, so a killed run never
        leaves half a model at ``path``; an explicit ``path`` that already exists is written into
        as it is (it may hold other files)."""
        default = path is None
        path = Path(path or self.output_dir / "final")
        self.accelerator.wait_for_everyone()
        adapter = is_adapter(self.accelerator.unwrap_model(self.model))  # not DDP's wrapper
        merge = merge_lora and adapter  # else an adapter is saved alone
        weights = gather_weights(self.accelerator, self.model, adapter and not merge)
        if self.accelerator.is_main_process:
            model = self.accelerator.unwrap_model(self.model)
            if merge:
                model, weights = merged(model, weights, keep=True)
            atomic = default or not path.exists()
            target = path.with_name(f".{path.name}.{os.getpid()}.tmp") if atomic else path
            if atomic:
                shutil.rmtree(target, ignore_errors=True)
            model.save_pretrained(target, safe_serialization=True, state_dict=weights)
            self.tokenizer.save_pretrained(target)
            if atomic:
                replace_dir(target, path)
        self.accelerator.wait_for_everyone()
        return path

    @staticmethod
    def load_model(path: str | Path, device: str = "auto"):
        """Read back what :meth:`save_model` wrote: ``(model, tokenizer)``."""
        from alignkit.models.base import BackendOptions, ModelSpec
        from alignkit.models.hf_loading import load_pretrained, resolve_device

        path = Path(path)
        adapter = path / "adapter_config.json"
        if adapter.exists():
            base = json.loads(adapter.read_text())["base_model_name_or_path"]
            spec = ModelSpec(kind="hf", path=base, adapter=str(path))
        else:
            spec = ModelSpec(kind="hf", path=str(path))
        options = BackendOptions(device=device)
        return load_pretrained(spec, options, resolve_device(device))
