"""Constitutional AI training runs: the chunked store, resumable critique-and-revise data,
run-directory identity, CLI user errors, before/after evaluation, and a tiny end-to-end run."""

from __future__ import annotations

import json

import pytest
from tracker_logs import tensorboard_scalars
from typer.testing import CliRunner

from alignkit.cli import app
from alignkit.constitutional.training import ChunkStore, ConstitutionalAITrainer
from alignkit.errors import BackendError, ConfigError, DataError
from alignkit.models.base import Completion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()
TESTBED_IDS = ("harm-general", "harm-honesty-helpfulness", "safe-honest-helpful")
CAI_COLUMNS = (
    "id", "init_prompt", "init_response", "critic_response", "revision_response", "chosen",
    "rejected", "principle_id", "round",
)  # fmt: skip


class Scripted:
    """A fake backend: answers, critiques and revises by rule; logs every call and prompt.

    With ``fail_on=k`` its k-th ``generate`` call (1-based) raises ``error``."""

    def __init__(self, fail_on: int | None = None, error: type[Exception] = BackendError) -> None:
        self.fail_on, self.error = fail_on, error
        self.calls: list[list[str]] = []
        self.closed = False
        self.name, self.supports_logprobs = "scripted", False

    @staticmethod
    def reply(prompt: str) -> str:
        if "Revision request:" in prompt:
            return "A careful answer."
        if "Critique request:" in prompt:
            return "The response is careless."
        return f"answer to {prompt}"

    def generate(self, prompts, config=None):
        self.calls.append(list(prompts))
        if len(self.calls) == self.fail_on:
            raise self.error("connection reset by peer")
        return [Completion(text=self.reply(p)) for p in prompts]

    def logprobs(self, prompts, completions):
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    @property
    def initial_prompts(self) -> list[str]:
        """The prompts that were answered (not critiqued or revised)."""
        reviews = "Here is a conversation."
        return [p for call in self.calls for p in call if not p.startswith(reviews)]


def _prompt_file(tmp_path, n: int = 5):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _trainer(tmp_path, backend: Scripted | None = None, **overrides) -> ConstitutionalAITrainer:
    settings = {
        "prompts": str(_prompt_file(tmp_path)),
        "output_dir": tmp_path / "run",
        "chunk_size": 2,
        "principles": list(TESTBED_IDS),
    }
    trainer = ConstitutionalAITrainer(**(settings | overrides))
    if backend is not None:
        trainer._backend = lambda model: backend
    return trainer


def _lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# -- ChunkStore -------------------------------------------------------------------------------
def test_chunk_store_round_trips_and_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    store = ChunkStore(path)
    assert (store.rows, store.dropped) == ({}, 0)
    store.append([{"id": "a", "x": 1}, {"id": "b", "x": "é"}])
    store.append([{"id": "c", "x": [1, 2]}])
    again = ChunkStore(path)
    assert again.rows == {
        "a": {"id": "a", "x": 1}, "b": {"id": "b", "x": "é"}, "c": {"id": "c", "x": [1, 2]}
    }  # fmt: skip
    assert again.dropped == 0

    intact = path.read_text(encoding="utf-8")
    path.write_text(intact + '{"id": "d", "x": ', encoding="utf-8")  # a crash mid-write
    torn = ChunkStore(path)
    assert torn.dropped == 1 and set(torn.rows) == {"a", "b", "c"}
    assert path.read_text(encoding="utf-8") == intact  # rewritten without the torn line
    torn.append([{"id": "d", "x": 4}])
    assert set(ChunkStore(path).rows) == {"a", "b", "c", "d"}


def test_chunk_store_bad_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"id": oops}\n{"id": "c"}\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        ChunkStore(path)
    assert str(path) in str(info.value) and "line 2" in str(info.value)
    assert path.read_text(encoding="utf-8").count("\n") == 3  # left untouched


def test_chunk_store_row_without_id_is_a_data_error(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"id": "a"}\n{"prompt": "no id"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 2"):
        ChunkStore(path)


# -- generate: chunked, resumable -------------------------------------------------------------
def test_generate_writes_cai_rows_and_resumes_without_calls(tmp_path):
    backend = Scripted()
    trainer = _trainer(tmp_path, backend)
    path = trainer.generate()
    assert path == tmp_path / "run" / "revisions.jsonl"
    rows = [json.loads(line) for line in _lines(path)]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(5)]
    for i, row in enumerate(rows):
        assert all(column in row for column in CAI_COLUMNS), row.keys()
        assert row["init_prompt"] == f"question {i}"
        assert row["init_response"] == row["rejected"] == f"answer to question {i}"
        assert row["critic_response"] == "The response is careless."
        assert row["revision_response"] == row["chosen"] == "A careful answer."
        assert row["principle_id"] in TESTBED_IDS and row["round"] == 1
    # chunks of 2, 2, 1 prompts; each: answer, critique, revise
    assert [len(call) for call in backend.calls] == [2, 2, 2, 2, 2, 2, 1, 1, 1]
    assert backend.closed
    assert trainer.stats["revisions_resumed"] == 0
    assert (trainer.stats["prompts"], trainer.stats["revised"]) == (5, 5)

    before = path.read_text(encoding="utf-8")
    fresh = Scripted()
    again = _trainer(tmp_path, fresh)
    assert again.generate() == path
    assert fresh.calls == [] and not fresh.closed  # never even loaded
    assert again.stats["revisions_resumed"] == 5
    assert path.read_text(encoding="utf-8") == before


def test_generate_redoes_only_a_torn_last_row(tmp_path):
    _trainer(tmp_path, Scripted()).generate()
    path = tmp_path / "run" / "revisions.jsonl"
    lines = _lines(path)
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20], encoding="utf-8")
    backend = Scripted()
    trainer = _trainer(tmp_path, backend)
    trainer.generate()
    assert trainer.stats["revisions_torn_lines"] == 1
    assert trainer.stats["revisions_resumed"] == 4
    assert backend.initial_prompts == ["question 4"]
    assert _lines(path) == lines


@pytest.mark.parametrize(("error", "fail_on"), [(BackendError, 4), (RuntimeError, 5)])
def test_backend_failure_keeps_finished_chunks_and_rerun_completes(tmp_path, error, fail_on):
    # call 4 answers chunk 2, call 5 critiques it: either way chunk 1 (2 prompts) is kept
    failing = Scripted(fail_on=fail_on, error=error)
    with pytest.raises(BackendError) as info:
        _trainer(tmp_path, failing).generate()
    message = str(info.value)
    path = tmp_path / "run" / "revisions.jsonl"
    assert "connection reset by peer" in message
    assert "2 of 5 prompts are finished" in message and str(path) in message
    assert failing.closed
    kept = _lines(path)
    assert [json.loads(line)["id"] for line in kept] == ["p0", "p1"]

    working = Scripted()
    trainer = _trainer(tmp_path, working)
    trainer.generate()
    assert working.initial_prompts == ["question 2", "question 3", "question 4"]
    assert [len(call) for call in working.calls] == [2, 2, 2, 1, 1, 1]
    assert trainer.stats["revisions_resumed"] == 2
    lines = _lines(path)
    assert lines[:2] == kept
    assert sorted(json.loads(line)["id"] for line in lines) == [f"p{i}" for i in range(5)]
    # the same data as one uninterrupted run in a single chunk (principles drawn per prompt id)
    reference = _trainer(tmp_path, Scripted(), output_dir=tmp_path / "ref", chunk_size=5)
    by_id = {row["id"]: row for row in map(json.loads, _lines(reference.generate()))}
    assert {row["id"]: row for row in map(json.loads, lines)} == by_id


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seed": 1}, "seed"), ({"principles": ["harm-general"]}, "principles")],
)
def test_rerun_with_other_settings_is_refused(tmp_path, change, field):
    _trainer(tmp_path, Scripted()).generate()
    backend = Scripted()
    with pytest.raises(ConfigError) as info:
        _trainer(tmp_path, backend, **change).generate()
    assert field in str(info.value) and str(tmp_path / "run") in str(info.value)
    assert backend.calls == []
    # settings that only change how the run goes (not the data) are accepted
    _trainer(tmp_path, Scripted(), chunk_size=3).generate()


def test_rerun_after_the_prompt_file_changed_is_refused(tmp_path):
    trainer = _trainer(tmp_path, Scripted())
    trainer.generate()
    _prompt_file(tmp_path, n=6)  # the same path, one more prompt
    with pytest.raises(ConfigError, match="prompt_set"):
        trainer.generate()


# -- CLI user errors --------------------------------------------------------------------------
def _broken_constitution(tmp_path) -> list[str]:
    path = tmp_path / "constitution.yaml"
    path.write_text(
        "principles:\n"
        "  - id: lazy\n"
        "    revision_request: Fix it.\n"
        "    comparison_question: Which is better?\n"
    )
    return ["--constitution", str(path)]


def _bad_store(tmp_path) -> list[str]:
    run = tmp_path / "run"
    run.mkdir()
    (run / "revisions.jsonl").write_text('{"id": "p0"}\nnot json\n{"id": "p1"}\n')
    return ["--prompts", str(_prompt_file(tmp_path))]


@pytest.mark.parametrize(
    ("arguments", "needles"),
    [
        (lambda tmp: ["--prompts", str(tmp / "empty.jsonl")], ["empty.jsonl", "has no prompts"]),
        (_broken_constitution, ["constitution.yaml", "'lazy'", "critique_request"]),
        (lambda tmp: ["--principles", "nope"], ["principles", "'nope'", "harm-general"]),
        (_bad_store, ["revisions.jsonl", "line 2"]),
    ],
    ids=["empty-prompts", "malformed-constitution", "unknown-principle", "corrupt-revisions"],
)
def test_cli_user_errors_exit_2_with_one_line(tmp_path, arguments, needles):
    (tmp_path / "empty.jsonl").write_text("")
    args = ["cai", "generate", *arguments(tmp_path), "--output-dir", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- before/after evaluation on the testbed ---------------------------------------------------
def test_evaluate_alignment_same_model_has_zero_change(testbed_path, tmp_path):
    from alignkit.evaluation.before_after import evaluate_alignment

    out = tmp_path / "eval"
    change = evaluate_alignment(
        "testbed", baseline="testbed", n=3, cache=False, scorers=("testbed",), output_dir=out
    )
    table = change.table()
    assert {"harmless", "helpful", "honest"} <= set(table)
    for name, row in table.items():
        assert row["before"] == row["after"] and row["diff"] == 0.0, (name, row)
        assert 0.0 <= row["after"] <= 1.0
    for file in ("after/eval.json", "before/eval.json", "change.json"):
        assert (out / file).is_file(), file
    saved = json.loads((out / "change.json").read_text())
    assert saved["table"] == json.loads(json.dumps(table))


# -- end to end -------------------------------------------------------------------------------
def test_cai_train_end_to_end_on_the_testbed_and_rerun_is_a_no_op(testbed_path, tmp_path):
    out = tmp_path / "cai"
    args = ["cai", "train", *(f for p in TESTBED_IDS for f in ("--principles", p))]
    args += ["--n", "4", "--sl-epochs", "0.5", "--rl-epochs", "0.5", "--eval-n", "4"]
    args += ["--device", "cpu", "--output-dir", str(out), "--report-to", "tensorboard"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(_lines(out / "revisions.jsonl")) == 16
    for file in ("sl/config.json", "rl/final/config.json", "eval/change.json", "summary.json"):
        assert (out / file).is_file(), file
    pairs = [json.loads(line) for line in _lines(out / "preferences.jsonl")]
    assert pairs and all(p["chosen"] != p["rejected"] for p in pairs)
    assert all(0.0 <= p["soft_label"] <= 1.0 and p["principles"] for p in pairs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stats"]["prompts"] == 16 and "rl_metrics" in summary["stats"]
    assert {"harmless", "helpful", "honest"} <= set(summary["stats"]["evaluation"])
    assert "RL-CAI model:" in result.output
    sft = tensorboard_scalars(out / "tensorboard" / "sft")
    dpo = tensorboard_scalars(out / "rl" / "tensorboard" / "dpo")
    assert len(sft["loss"]) >= 1 and sorted(dpo["loss"]) == list(range(1, len(dpo["loss"]) + 1))
    figures = tensorboard_scalars(out / "tensorboard" / "cai")
    harmless = summary["stats"]["evaluation"]["harmless"]
    assert figures["evaluation/harmless/after"] == {0: pytest.approx(harmless["after"])}

    weights = [out / "sl" / "model.safetensors", out / "rl" / "final" / "model.safetensors"]
    stamps = [w.stat().st_mtime_ns for w in weights]
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert [w.stat().st_mtime_ns for w in weights] == stamps  # nothing retrained
    stats = json.loads((out / "summary.json").read_text())["stats"]
    assert stats["revisions_resumed"] == 16 and stats["feedback_resumed"] == 16
    assert "rl_metrics" not in stats
    assert [json.loads(line) for line in _lines(out / "preferences.jsonl")] == pairs
