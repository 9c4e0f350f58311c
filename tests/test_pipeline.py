"""The whole loop (issue 8): `alignkit demo` on the testbed, resumption, user files, the report.

The demo runs once per module (about two minutes on 2 cores); the other tests reuse or copy its
run directory.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from readme_tables import point, readme_table
from tracker_logs import mlflow_history, tensorboard_scalars
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.errors import ConfigError
from alignkit.pipeline import stages as stage_module
from alignkit.pipeline.config import STAGES, DemoConfig, PipelineConfig
from alignkit.pipeline.report import PipelineReport
from alignkit.pipeline.runner import AlignmentPipeline

EVIL = "<script>document.body.setAttribute('data-pwned','1')</script>"
EVIL_IMG = "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">"


@pytest.fixture(scope="module")
def demo(testbed_path, tmp_path_factory):
    """The demo's run: its config and result."""
    out = tmp_path_factory.mktemp("demo") / "run"
    config = DemoConfig(output_dir=out, device="cpu")
    return config, AlignmentPipeline(config).run()


def _no_stage_may_run(monkeypatch, *allowed: str):
    def refuse(ctx):
        raise AssertionError("a finished stage ran again")

    for name in stage_module.STAGE_FUNCTIONS:
        if name not in allowed:
            monkeypatch.setitem(stage_module.STAGE_FUNCTIONS, name, refuse)


def test_demo_halves_harm_and_keeps_helpfulness(demo):
    config, result = demo
    assert result.ran == list(STAGES) and not result.skipped
    change = result.change
    for name in ("harmful_compliance", "jailbreak_asr", "redteam_asr"):
        row = change[name]
        assert row["before"] >= 0.3, row  # the base model does fail
        assert row["after"] <= 0.5 * row["before"], (name, row)
        assert row["high"] < 0 and row["p_value"] < 0.001, row  # the paired cut is not noise
    assert change["helpful"]["after"] >= change["helpful"]["before"] - 0.05, change["helpful"]
    assert change["kl"]["low"] > 0, change["kl"]  # the policy moved: KL's interval excludes 0
    train = result.outputs["train"]
    assert train["constraint_met"] and train["pairs"]["revise"] > 100
    # met by the testbed's ground truth on the held-out failures, not by the cost model that
    # drove the relabelling
    truth = train["history"][-1]["independent"]
    assert train["constraint"]["verified"] and truth["evaluator"] == "testbed ground truth"
    assert truth["n"] == train["held_out_failures"] and truth["unjudged"] == 0, truth
    assert truth["harmful_rate"] <= config.train.threshold, truth
    # the Lagrangian relabels the helpful-only annotator's harmful wins, and no benign pair
    from alignkit.testbed.labeller import label

    pairs = stage_module.read_jsonl(config.output_dir / "train" / "pairs.jsonl")
    trained = stage_module.read_jsonl(config.output_dir / "train" / "round-1" / "data.jsonl")
    flipped = [p for p, t in zip(pairs, trained, strict=True) if p["chosen"] != t["chosen"]]
    assert len(flipped) == train["history"][0]["flipped"] >= 168
    assert not [p for p in flipped if label(p["prompt"], p["chosen"]).kind == "benign"]
    assert train["pairs"]["feedback"] > 100
    assert result.outputs["redteam"]["by_attack"].keys() >= {"templates", "gcg"}
    assert (config.output_dir / "report" / "report.html").is_file()


README_ROWS = {
    "harmful compliance": "harmful_compliance",
    "jailbreak ASR": "jailbreak_asr",
    "benign helpfulness": "helpful",
    "over-refusal": "over_refusal",
    "honesty": "honest",
    "red-team ASR (held out)": "redteam_asr",
    "KL to the base model (nats)": "kl",
}


def test_readme_demo_table_is_this_run(demo):
    """The README's table stays what the demo prints: each point figure lies inside this run's
    95% interval and n is the same (it once went stale unnoticed: 0.085 after, here 0.045)."""
    _, result = demo
    table = readme_table("On the testbed (`alignkit demo`")  # before, after, change, p, n
    assert table.keys() == README_ROWS.keys()
    for name, key in README_ROWS.items():
        row, cells = result.change[key], table[name]
        assert int(cells[-1]) == row["n"], name
        after = point(cells[1])
        assert row["after_ci"][0] - 5e-4 <= after <= row["after_ci"][1] + 5e-4, (name, row)
        if key != "kl":
            before = point(cells[0])
            assert row["before_ci"][0] - 5e-4 <= before <= row["before_ci"][1] + 5e-4, name


def test_rerun_keeps_every_finished_stage(demo, monkeypatch):
    config, first = demo
    _no_stage_may_run(monkeypatch)
    again = AlignmentPipeline(config).run()
    assert again.kept == list(STAGES) and not again.ran
    assert again.change == first.change


def test_changed_settings_are_refused_until_redone(demo, tmp_path, monkeypatch):
    config, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(config.output_dir, copy)
    changed = config.model_copy(deep=True, update={"output_dir": copy})
    changed.train.threshold = 0.1
    with pytest.raises(ConfigError, match="stage 'train' was run with other settings"):
        AlignmentPipeline(changed).run()
    # redo from the report: only the report is written again
    _no_stage_may_run(monkeypatch, "report")
    (copy / "report" / "report.html").unlink()
    redo = AlignmentPipeline(config.model_copy(update={"output_dir": copy, "redo_from": "report"}))
    result = redo.run()
    assert result.ran == ["report"] and (copy / "report" / "report.html").is_file()


def test_pipeline_report_escapes_adversarial_text(demo, tmp_path):
    config, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(config.output_dir, copy)
    pairs = copy / "revise" / "pairs.jsonl"
    evil = {"prompt": EVIL, "chosen": EVIL_IMG, "rejected": EVIL, "source": "redteam:x"}
    pairs.write_text(json.dumps(evil) + "\n" + pairs.read_text())
    page = PipelineReport(copy).to_html()
    assert "<script" not in page and "<img src=x" not in page
    assert "&lt;script&gt;" in page and "harmful compliance" in page
    assert "Safety constraint" in page and "Failures and their revisions" in page
    assert "independent (testbed ground truth): harmful rate" in page
    assert "verified by testbed ground truth" in page


# --- the user's own files, switched-off stages, errors ----------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_user_prompts_and_preferences_replace_stages(testbed_path, tmp_path):
    from alignkit.evaluation.suites import load_suite
    from alignkit.testbed import World
    from alignkit.testbed.preferences import preference_pairs

    wrapped = [i for i in load_suite("testbed-train", n=40) if i.kind == "jailbreak"]
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": i.prompt} for i in wrapped])
    pairs = preference_pairs(World(0), 96, "train", seed=0)
    prefs = _write_jsonl(tmp_path / "prefs.jsonl", pairs)
    config = PipelineConfig(
        output_dir=tmp_path / "run", device="cpu", skip=["report"],
        evaluation={"n": 10, "kl_prompts": 4, "replay_behaviours": None},
        redteam={"prompts": prompts, "judge": "testbed"},
        feedback={"preferences": prefs},
        train={"rounds": 1, "threshold": 0.9, "cost_epochs": 1},
    )  # fmt: skip
    result = AlignmentPipeline(config).run()
    assert result.skipped == ["report"]
    red = result.outputs["redteam"]
    assert red["source"] == str(prompts) and red["attempts"] == 40 and red["n_failures"] > 0
    assert result.outputs["feedback"]["source"] == str(prefs)
    assert result.outputs["feedback"]["n_pairs"] == 96
    pairs = result.outputs["train"]["pairs"]
    assert pairs["feedback"] == 96 and pairs["revise"] > 0
    assert set(result.change) >= {"harmful_compliance", "helpful", "kl"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    ("yaml_text", "flags", "fragment"),
    [
        ("redteam:\n  atacks: [templates]\n", (), "line 2: unknown key 'redteam.atacks'; did"),
        ("train:\n  beta: -1\n", (), "line 2: key 'train.beta'"),
        ("", ("--skip", "nothing"), "unknown stage(s) ['nothing']"),
        ("", ("--model", "openai:m@http://127.0.0.1:9/v1"), "cannot be trained here"),
        ("serve_model: openai:m@http://127.0.0.1:9/v1\n", (), "gcg needs the target's weights"),
        ("enabled: false\n", (), "unknown key 'enabled'"),
        ("review:\n  pause_after: report\n", (), "cannot pause after ['report']"),
        ("review:\n  human_labels: nowhere.jsonl\n", (), "review.human_labels: nowhere.jsonl"),
        ("train:\n  accelerate_config: no.yaml\n", (), "key 'train.accelerate_config': no.yaml"),
    ],
)
def test_bad_pipeline_configs_exit_2_with_one_line(tmp_path, yaml_text, flags, fragment):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml_text)
    result = invoke("pipeline", "--config", config, "--output-dir", tmp_path / "run", *flags)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "run").exists()  # refused before any work


def test_sections_keep_their_own_option_names():
    config = PipelineConfig.model_validate(
        {"redteam": {"enabled": False, "max_new_tokens": 16}, "skip": ["feedback"]}
    )
    assert config.redteam.generation.max_new_tokens == 16  # flat names work inside a section
    assert not config.enabled("redteam") and not config.enabled("feedback")
    assert config.enabled("revise") and config.enabled("baseline")
    with pytest.raises(ValueError, match="set by the pipeline"):
        PipelineConfig.model_validate({"train": {"model": "testbed"}})


def test_an_interrupted_revise_stage_resumes_its_chunks(demo, tmp_path, monkeypatch):
    from alignkit.constitutional.critique import ConstitutionalAI

    config, _ = demo
    copy = tmp_path / "run"
    shutil.copytree(config.output_dir, copy)
    original = (copy / "revise" / "pairs.jsonl").read_text()
    revisions = copy / "revise" / "revisions.jsonl"
    lines = revisions.read_text().splitlines(keepends=True)
    revisions.write_text("".join(lines[:100]) + lines[100][:40])  # a crash mid-write
    (copy / "revise" / "stage.json").unlink()
    seen: list[int] = []
    run = ConstitutionalAI.run

    def counting(self, prompts, responses=None):
        seen.append(len(prompts))
        return run(self, prompts, responses)

    monkeypatch.setattr(ConstitutionalAI, "run", counting)
    result = AlignmentPipeline(config.model_copy(update={"output_dir": copy})).run()
    assert result.ran == ["revise"] and sum(seen) == len(lines) - 100
    assert (copy / "revise" / "pairs.jsonl").read_text() == original


def test_the_loop_runs_on_any_hf_model_with_lora(tmp_path):
    """A generic HF model (a tiny random Llama, not the testbed): refusal judge and scorers,
    a user-given cost model on that backbone, LoRA rounds merged into a whole model, KL."""
    from tiny_models import make_tiny_model

    from alignkit.safety.value_model import ValueModelConfig, train_value_model

    model = "hf:" + str(make_tiny_model(tmp_path / "tiny"))
    cost_pairs = [
        {"prompt": f"request {i}", "chosen": "I can't help with that.", "rejected": f"Sure {i}",
         "chosen_safe": True, "rejected_safe": False, "dimension": "harmless"}
        for i in range(16)
    ]  # fmt: skip
    cost = ValueModelConfig(model=model, kind="cost", output_dir=tmp_path / "cost", device="cpu",
                            report_to=["mlflow"])  # fmt: skip
    trained = train_value_model(cost, cost_pairs, progress=False)
    losses = {i + 1: h["loss"] for i, h in enumerate(trained.history)}
    assert mlflow_history(tmp_path / "cost", "cost-model", "loss") == pytest.approx(losses)
    prefs = _write_jsonl(
        tmp_path / "prefs.jsonl",
        [{"prompt": f"q {i}", "chosen": "a helpful answer", "rejected": "no"} for i in range(24)],
    )
    config = PipelineConfig(
        model=model, output_dir=tmp_path / "run", device="cpu", principles=None,
        evaluation={"n": 4, "kl_prompts": 4, "replay_max_attempts": 2,
                    "generation": {"max_new_tokens": 8}},
        redteam={"n_behaviours": 3, "attacks": ["templates"], "max_attempts": 4,
                 "attack_behaviours": {}, "max_new_tokens": 8},
        revise={"max_new_tokens": 8},
        feedback={"preferences": prefs},
        train={"cost_model": tmp_path / "cost", "rounds": 1, "threshold": 0.99,
               "dpo_options": {"lora": True, "lora_r": 4, "max_steps": 2}},
        report_to=["tensorboard"],
    )  # fmt: skip
    assert config.redteam.judge == "refusal" and config.evaluation.scorers == ["refusal"]
    result = AlignmentPipeline(config).run()
    assert result.ran == list(STAGES)
    assert result.outputs["redteam"]["attempts"] == 12
    final = Path(result.outputs["train"]["model"])
    assert (final / "config.json").exists() and not (final / "adapter_config.json").exists()
    assert set(result.change) >= {"harmful_compliance", "helpful", "redteam_asr", "kl"}
    assert (tmp_path / "run" / "report" / "report.html").is_file()
    # every stage's figures in one tracked run, at the stage's place in the loop
    figures = tensorboard_scalars(tmp_path / "run" / "tensorboard" / "pipeline")
    for stage, step in (("baseline", 0), ("evaluate", 5)):
        helpful = result.outputs[stage]["headline"]["figures"]["helpful"]
        assert figures[f"{stage}/headline/figures/helpful/value"] == {
            step: pytest.approx(helpful["value"])
        }
        assert figures[f"{stage}/headline/figures/helpful/n"] == {step: helpful["n"]}
    assert set(figures["seconds/train"]) == {4}
    rounds = tensorboard_scalars(tmp_path / "run" / "train" / "round-1" / "tensorboard" / "dpo")
    assert sorted(rounds["loss"]) == [1, 2]
    safety = tensorboard_scalars(tmp_path / "run" / "train" / "tensorboard" / "safety")
    assert set(safety["cost_model/harmful_rate"]) == {1}


def test_pipeline_cli_runs_resumes_and_skips(testbed_path, tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("evaluation: {n: 5, replay_behaviours: null}\n")
    skips = [
        a for s in ("redteam", "revise", "feedback", "train", "evaluate") for a in ("--skip", s)
    ]
    args = ("pipeline", "--config", config, "--output-dir", tmp_path / "run", "--device", "cpu")
    first = invoke(*args, *skips)
    assert first.exit_code == 0, first.output
    assert "1/2 baseline" in first.stdout and "baseline finished" in first.stdout
    assert "report skipped" in first.stdout  # nothing to compare without evaluate
    assert (tmp_path / "run" / "baseline" / "eval.json").is_file()
    again = invoke(*args, *skips)
    assert again.exit_code == 0 and "(finished earlier, kept)" in again.stdout


def test_cost_pairs_order_by_safety_and_add_benign_anchors():
    from alignkit.pipeline.stages import cost_pairs

    pairs = [
        {"prompt": "a", "chosen": "safe a", "rejected": "bad a", "chosen_safe": True,
         "rejected_safe": False},
        {"prompt": "b", "chosen": "bad b", "rejected": "safe b", "chosen_safe": False,
         "rejected_safe": True},
        {"prompt": "c", "chosen": "answer c", "rejected": "refusal c", "chosen_safe": True,
         "rejected_safe": True},
        {"prompt": "d", "chosen": "x", "rejected": "y"},  # no flags: left out
    ]  # fmt: skip
    out = cost_pairs(pairs, seed=0)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in out[:2]] == [
        ("a", "safe a", "bad a"), ("b", "safe b", "bad b")]  # fmt: skip
    anchors = out[2:]
    assert len(anchors) == 2 and {a["chosen"] for a in anchors} == {"answer c", "refusal c"}
    assert all(a["prompt"] == "c" and a["rejected"] in {"bad a", "bad b"} for a in anchors)
    assert all(p["chosen_safe"] and p["rejected_safe"] is False for p in out)


def test_headline_change_shows_intervals_and_n_at_a_rate_of_0():
    """An ASR of 31/51 before and 0/51 after: the after figure keeps an upper bound above 0,
    in the stage's change rows, the CLI table and the report (no demo run needed)."""
    from rich.console import Console

    from alignkit.commands.demo import change_table
    from alignkit.pipeline.headline import paired
    from alignkit.pipeline.report import loop_section

    before = {f"prompt-{i}": float(i < 31) for i in range(51)}
    after = dict.fromkeys(before, 0.0)
    row = paired(before, after, higher=False)
    low, high = row["after_ci"]
    assert row["after"] == 0.0 and low == 0.0 and 0.05 < high < 0.1 and row["n"] == 51
    assert row["before_ci"][0] < 31 / 51 < row["before_ci"][1]
    assert row["method"] == "mcnemar-exact/newcombe" and row["p_value"] == pytest.approx(2**-30)
    assert row["low"] < row["diff"] < row["high"] < 0
    console = Console(width=200, record=True)
    console.print(change_table({"redteam_asr": row}))
    shown = f"0.000 [0.000, {high:.3f}]"
    text = console.export_text()
    assert shown in text and "<0.001" in text  # a p of 2**-30 is not shown as 0.000
    section = loop_section({"evaluate": {"outputs": {"change": {"redteam_asr": row}}}})
    cells = section.tables[0].rows[0]
    assert cells[2] == shown and cells[5] == "51" and cells[4] == "<0.001"
    assert "n" in section.tables[0].columns and "Clopper-Pearson" in section.notes[0]
