"""Choosing the DPO loss and beta by performance: successive halving over short trials.

Given candidate settings (``loss_type`` x ``beta``, each a set of overrides of one
:class:`~alignkit.dpo.config.DPOConfig`) and the full budget ``B = max_steps``, the candidates
race by successive halving (Jamieson & Talwalkar 2016, "Non-stochastic Best Arm
Identification and Hyperparameter Optimization"; the building block of Hyperband, Li et al.
2018): every candidate is a full run of ``B`` steps (its learning-rate schedule is the whole
run's) that is trained only up to the rung's step, scored on a held-out split and
checkpointed; the better ``1/eta`` of them continue from their checkpoints to the next rung's
step (``B / eta^k`` for ``k`` rungs to go), and the last one continues to ``B``. So the chosen
model *is* the chosen candidate's full-budget run, and the race costs, with ``n`` candidates,
``sum over rungs of survivors x steps added``: ``2B`` for 4 candidates with ``eta = 2``
(``B`` for the first rung, ``B / 2`` for the second, ``B / 2`` for the final run), against
``4B`` to train every candidate in full. Every trial is recorded in ``selection.json`` as it
finishes, so a killed race resumes where it stopped.

The score is the same for every loss: the held-out *implicit-reward accuracy*, the share of
held-out pairs whose DPO margin ``(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) -
log pi_ref(y_l))`` is positive (ties count half). It does not depend on beta, so losses with
different betas (and SimPO, which trains without the reference) are compared on one scale.
The held-out split is the config's ``eval_data`` if given, else a seeded 20% of the training
pairs (the trials then train on the other 80%).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from alignkit.atomic import write_text
from alignkit.dpo.config import DPOConfig
from alignkit.errors import ConfigError

HELD_OUT_SHARE = 0.2


@dataclass
class Trial:
    name: str
    overrides: dict[str, Any]
    rung: int
    steps: int
    accuracy: float
    loss: float | None = None


@dataclass
class Selection:
    """The race: every trial, the choice, and the compute (optimizer steps of ``batch_size``
    pairs) it took against training every candidate for the full budget."""

    candidates: list[dict[str, Any]]
    trials: list[Trial] = field(default_factory=list)
    chosen: dict[str, Any] = field(default_factory=dict)
    budget: int = 0  # the full budget B (steps of the final run)
    trial_steps: int = 0  # steps trained before the winner's final stretch
    held_out: int = 0  # pairs scored
    metrics: dict[str, float] = field(default_factory=dict)  # the winner's full run
    trainer: Any = None  # the winner's trainer, trained to the full budget

    @property
    def total_steps(self) -> int:
        """Every step trained: the rungs, and the winner's stretch from its last rung to B."""
        return self.trial_steps + (self.budget - max((t.steps for t in self.trials), default=0))

    @property
    def full_steps(self) -> int:
        """What training every candidate for the full budget costs."""
        return self.budget * len(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "chosen": self.chosen,
            "trials": [asdict(t) for t in self.trials],
            "budget_steps": self.budget,
            "trial_steps": self.trial_steps,
            "total_steps": self.total_steps,
            "full_steps": self.full_steps,
            "held_out_pairs": self.held_out,
            "final_metrics": self.metrics,
            "score": "held-out implicit-reward accuracy (DPO margin > 0; ties half)",
        }


def candidates(losses: list[str], betas: list[float]) -> list[dict[str, Any]]:
    """Every (loss, beta) combination as config overrides (a loss alone keeps its beta)."""
    betas = betas or [None]  # type: ignore[list-item]
    return [
        {"loss_type": loss, **({"beta": beta} if beta is not None else {})}
        for loss in losses
        for beta in betas
    ]


def _name(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items())


def rungs(n: int, budget: int, eta: int = 2) -> list[tuple[int, int]]:
    """(candidates, step reached) of each rung: ``n`` candidates, divided by ``eta`` (rounded
    up) each rung down to one, which reaches ``budget``; a rung ``k`` rungs before the last
    stops at ``budget // eta^k``."""
    if n < 2 or eta < 2:
        raise ConfigError("method selection needs at least two candidates and eta >= 2")
    sizes = []
    while n > 1:
        sizes.append(n)
        n = math.ceil(n / eta)
    sizes.append(1)
    last = len(sizes) - 1
    return [(k, max(1, budget // eta ** (last - r))) for r, k in enumerate(sizes)]


@torch.no_grad()
def heldout_accuracy(trainer, pairs: list, batch_size: int = 64) -> float:
    """The share of ``pairs`` whose DPO margin under ``trainer``'s policy is positive (ties
    count half), scored ``batch_size`` pairs at a time."""
    from alignkit.dpo.evaluation import reference_model
    from alignkit.dpo.forward import get_log_probs, get_ref_log_probs

    policy = trainer.accelerator.unwrap_model(trainer.model)
    was_training = policy.training
    policy.eval()
    reference, loaded = reference_model(trainer)
    wins = 0.0
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        mine = get_log_probs(policy, batch, trainer.pad_id).logps  # [pairs, (chosen, rejected)]
        gap = mine - get_ref_log_probs(reference, batch, trainer.pad_id).logps.to(mine.device)
        margin = gap[:, 0] - gap[:, 1]
        wins += float((margin > 0).sum()) + 0.5 * float((margin == 0).sum())
    policy.train(was_training)
    if loaded:
        del reference
    return wins / len(pairs)


def split(dataset, config: DPOConfig, heldout=None) -> tuple[list, list]:
    """(training pairs, held-out pairs): ``heldout`` if given, else a seeded 20% of ``dataset``."""
    pairs = [dataset[i] for i in range(len(dataset))]
    if heldout is not None:
        return pairs, [heldout[i] for i in range(len(heldout))]
    order = list(range(len(pairs)))
    random.Random(f"selection-{config.seed}").shuffle(order)
    cut = max(1, round(HELD_OUT_SHARE * len(pairs)))
    if len(pairs) - cut < config.batch_size:
        raise ConfigError(f"method selection: {len(pairs)} pairs are too few to hold out {cut}")
    return [pairs[i] for i in order[cut:]], [pairs[i] for i in order[:cut]]


def select_method(
    config: DPOConfig,
    options: list[dict[str, Any]],
    eta: int = 2,
    train_dataset=None,
    eval_dataset=None,
) -> Selection:
    """Race ``options`` (config overrides) by successive halving and train the winner to the
    full budget; the :class:`Selection` (also in ``OUTPUT_DIR/selection.json``) holds the
    trials, the choice, the winner's final metrics and its trainer (``result.trainer``)."""
    import copy

    from alignkit.dpo.model_io import load_policy
    from alignkit.dpo.trainer import DPOTrainer, preference_dataset

    if not config.max_steps:
        raise ConfigError("method selection needs max_steps: the full budget B")
    for overrides in options:  # every candidate valid before any training
        DPOConfig.model_validate({**config.model_dump(), **overrides})
    model, tokenizer = load_policy(config)
    data = (
        train_dataset
        if train_dataset is not None
        else preference_dataset(config, config.data, tokenizer)
    )
    if eval_dataset is None and config.eval_data is not None:
        eval_dataset = preference_dataset(config, config.eval_data, tokenizer)
    train, held = split(data, config, eval_dataset)
    root = Path(config.output_dir) / "selection"
    record = root.parent / "selection.json"
    result = Selection(candidates=list(options), budget=config.max_steps, held_out=len(held))
    done = _recorded(record, options)

    def trainer(i: int):
        settings = {**options[i], "output_dir": root / str(i), "eval_data": None,
                    "eval_steps": 0, "kl_samples": 0, "resume": True}  # fmt: skip
        run = DPOTrainer(model=copy.deepcopy(model), config=config, tokenizer=tokenizer,
                         train_dataset=train, **settings)  # fmt: skip
        run.tracking_name = f"trial-{_name(options[i])}"  # its curve, rung after rung
        return run

    alive, reached = list(range(len(options))), [0] * len(options)
    plan = rungs(len(options), config.max_steps, eta)
    for rung, (_, until) in enumerate(plan[:-1]):
        scores = {}
        for i in alive:
            trial = done.get((rung, i))
            if trial is None:
                run = trainer(i)
                last = run.train(until=until)
                trial = Trial(_name(options[i]), options[i], rung, until,
                              heldout_accuracy(run, held), last.get("loss"))  # fmt: skip
                del run
            result.trials.append(trial)
            result.trial_steps += until - reached[i]
            reached[i], scores[i] = until, trial.accuracy
            write_text(record, json.dumps(result.to_dict(), indent=2))
        alive = sorted(alive, key=lambda i: (-scores[i], i))[: math.ceil(len(alive) / eta)]
    winner = alive[0]
    result.chosen = dict(options[winner])
    result.trainer = trainer(winner)
    result.metrics = result.trainer.train()  # from its last checkpoint to the full budget
    write_text(record, json.dumps(result.to_dict(), indent=2))
    return result


def _recorded(path: Path, options: list[dict[str, Any]]) -> dict[tuple[int, int], Trial]:
    """The trials an earlier, killed race of the same candidates recorded, by (rung, index)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if saved.get("candidates") != options:
        return {}
    return {
        (t["rung"], options.index(t["overrides"])): Trial(**t)
        for t in saved.get("trials", [])
        if t.get("overrides") in options
    }
