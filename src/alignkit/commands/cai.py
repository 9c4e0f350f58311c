"""``alignkit cai generate | label | train``: Constitutional AI in a resumable run directory."""

from __future__ import annotations

import typer

from alignkit.commands._console import change_table, print_note, stdout
from alignkit.commands._options import config_command
from alignkit.constitutional.config import CAIConfig

group = typer.Typer(
    name="cai",
    help="Constitutional AI: critique-and-revise data, AI feedback labels, SL-CAI + RL-CAI.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``cai`` command group to ``app``."""
    app.add_typer(group)


def _trainer(config: CAIConfig):
    from alignkit.constitutional.training import ConstitutionalAITrainer

    return ConstitutionalAITrainer(config)


def _resumed(stats: dict, what: str) -> None:
    if stats.get(f"{what}_resumed"):
        print_note(f"resumed: {stats[f'{what}_resumed']} prompts were already done")


@config_command(group, "generate", CAIConfig)
def generate(config: CAIConfig) -> None:
    """Answer the prompts, critique and revise under the constitution -> revisions.jsonl."""
    trainer = _trainer(config)
    path = trainer.generate()
    _resumed(trainer.stats, "revisions")
    print_note(
        f"{trainer.stats['prompts']} prompts, {trainer.stats['revised']} final responses differ "
        f"from the initial ones; records: {path}"
    )


@config_command(group, "label", CAIConfig)
def label(config: CAIConfig) -> None:
    """Sample response pairs from the policy (default: the SL-CAI model, trained first if
    missing) and label them with AI feedback -> preferences.jsonl."""
    trainer = _trainer(config)
    path = trainer.label(config.policy)
    _resumed(trainer.stats, "feedback")
    skipped = trainer.stats["pairs_skipped"]
    print_note(
        f"{trainer.stats['pairs_labelled']} labelled pairs in {path}; skipped: "
        + (", ".join(f"{n} {why}" for why, n in skipped.items()) or "none")
    )


@config_command(group, "train", CAIConfig)
def train(config: CAIConfig) -> None:
    """SL-CAI then RL-CAI (every missing stage: generate, SL, label, DPO), then evaluate."""
    trainer = _trainer(config)
    result = trainer.train()
    print_note(f"SL-CAI model: {result.sl_model}")
    print_note(f"RL-CAI model: {result.rl_model}")
    table = result.stats.get("evaluation")
    if table:
        stdout().print(
            change_table(
                table, f"{config.model} -> RL-CAI ({config.evaluation_suite})", first="dimension"
            )
        )
        print_note(f"evaluation runs: {result.output_dir / 'eval'} (alignkit report DIR)")
