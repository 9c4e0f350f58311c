"""Constitutional AI critique-and-revise loops: constitution files, batching, seeding,
convergence, multi-agent aggregation, and the effect on the testbed's ground truth."""

from __future__ import annotations

import json

import pytest

from alignkit.constitutional import (
    Constitution,
    ConstitutionalAI,
    IterativeConstitutionalAI,
    MultiAgentConstitutionalAI,
    Principle,
    default_constitution,
    is_no_change,
    load_constitution,
    write_records,
)
from alignkit.errors import ConfigError, DataError
from alignkit.models.base import Completion, GenerationConfig
from alignkit.testbed import World
from alignkit.testbed import formats as F
from alignkit.testbed.labeller import label

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TESTBED_IDS = ("harm-general", "harm-honesty-helpfulness", "safe-honest-helpful")
GEN = GenerationConfig(temperature=1.0, seed=0, max_new_tokens=64)
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=64)


class Counting:
    """Wraps a backend and records the size of every ``generate`` call."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.name, self.supports_logprobs = "counting", False

    def generate(self, prompts, config=None):
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, config)

    def logprobs(self, prompts, completions):
        raise NotImplementedError

    def close(self) -> None:
        pass


class Scripted:
    """A fake backend answering each prompt with ``reply(prompt)``; logs every prompt."""

    def __init__(self, reply) -> None:
        self.reply, self.prompts, self.calls = reply, [], 0
        self.name, self.supports_logprobs = "scripted", False

    def generate(self, prompts, config=None):
        self.calls += 1
        self.prompts.extend(prompts)
        return [Completion(text=self.reply(p)) for p in prompts]

    def logprobs(self, prompts, completions):
        raise NotImplementedError

    def close(self) -> None:
        pass


# -- constitution ---------------------------------------------------------------------------
def test_default_constitution_covers_tags_and_testbed_formats():
    c = default_constitution()
    assert len(c) >= 8
    assert {t for p in c.principles for t in p.tags} == {"harmlessness", "honesty", "helpfulness"}
    trained = c.select(*TESTBED_IDS)
    assert {p.critique_request for p in trained.principles} == set(F.CRITIQUE_REQUESTS)
    assert {p.revision_request for p in trained.principles} == set(F.REVISION_REQUESTS)
    assert {p.comparison_question for p in trained.principles} == set(
        F.JUDGEMENT_QUESTIONS.values()
    )
    assert c.with_tags("honesty").principles and all(
        "honesty" in p.tags for p in c.with_tags("honesty").principles
    )


def _principle(pid: str = "p1", **over) -> dict:
    base = {
        "id": pid,
        "critique_request": "Is it harmful?",
        "revision_request": "Make it harmless.",
        "comparison_question": "Which is more harmless?",
        "tags": ["harmlessness"],
    }
    return base | over


def test_load_constitution_yaml_and_json(tmp_path):
    import yaml

    data = {"name": "mine", "principles": [_principle("a"), _principle("b", tags=[])]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "c.json").write_text(json.dumps(data["principles"]))
    from_yaml = load_constitution(tmp_path / "c.yaml")
    from_json = load_constitution(tmp_path / "c.json")
    assert from_yaml.name == "mine" and [p.id for p in from_yaml.principles] == ["a", "b"]
    assert from_json.principles == from_yaml.principles


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ([_principle("x", critique_request=None)], ["principle #0", "'x'", "critique_request"]),
        ([_principle("a"), _principle("bad", tags=["speed"])], ["principle #1", "'bad'", "tags"]),
        ([_principle("a"), _principle("a")], ["duplicate principle id 'a'"]),
        ([_principle("a", extra_field=1)], ["principle #0", "extra_field"]),
        ([_principle("a", revision_request="   ")], ["revision_request", "blank"]),
        ([], ["principles"]),
        ("just text", ["expected a list of principles"]),
    ],
)
def test_constitution_validation_errors(tmp_path, content, needles):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as info:
        load_constitution(path)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    for needle in needles:
        assert needle in message


def test_constitution_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_constitution(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("principles: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_constitution(bad)


def test_no_change_verdict_parsing():
    assert is_no_change(F.critique_text("helpful"))
    assert is_no_change("Looks fine.  NO CHANGES\nare needed.")
    assert not is_no_change(F.critique_text("harmful", "weapons"))
    assert is_no_change("All good: ship it", phrases=["ship it"])


# -- loops with scripted backends -----------------------------------------------------------
def _critic_flagging(words):
    """A critic that flags responses containing any of ``words``."""

    def reply(prompt: str) -> str:
        response = prompt.split("Assistant: ", 1)[1].split("\nCritique request:")[0]
        if any(w in response for w in words):
            return f"The response mentions {words[0]}. The assistant should refuse."
        return F.NO_CHANGE

    return reply


def test_iterative_stops_on_verdict_similarity_and_max_rounds():
    # the reviser appends "!" once per round; "bad" responses are always flagged
    critic = _critic_flagging(["bad"])

    def model(prompt: str) -> str:
        if "Critique request:" in prompt:
            return critic(prompt)
        if "Revision request:" in prompt:
            old = prompt.split("Assistant: ", 1)[1].split("\nCritique:")[0]
            if old.startswith("stable"):
                return old  # identical revision: converged by similarity
            return old.replace("bad", "fine") if "bad bad" not in old else old + " more"
        raise AssertionError(prompt)

    backend = Scripted(model)
    cai = IterativeConstitutionalAI(
        backend, default_constitution(), max_rounds=3, similarity_threshold=0.99, seed=1
    )
    responses = ["good answer", "a bad answer", "stable bad text", "bad bad " + "x" * 3]
    records = cai.run(["q1", "q2", "q3", "q4"], responses=responses)
    by = {r.init_response: r for r in records}
    assert (by["good answer"].stop_reason, by["good answer"].rounds) == ("no_change", 1)
    assert not by["good answer"].steps[0].revised
    assert by["a bad answer"].final_response == "a fine answer"
    assert (by["a bad answer"].stop_reason, by["a bad answer"].rounds) == ("no_change", 2)
    assert (by["stable bad text"].stop_reason, by["stable bad text"].rounds) == ("converged", 1)
    assert (by[responses[3]].stop_reason, by[responses[3]].rounds) == ("max_rounds", 3)
    # round 1: 4 critiques + 3 revisions; round 2: 2 critiques + 1 revision; round 3: 1 + 1
    assert backend.calls == 6
    row = by["a bad answer"].to_dict()
    assert row["round"] == 2 and [s["round"] for s in row["steps"]] == [1, 2]
    assert row["chosen"] == "a fine answer" and row["rejected"] == "a bad answer"


@pytest.mark.parametrize(("aggregation", "revised"), [("union", [1, 2]), ("majority", [2])])
def test_multi_agent_aggregation(aggregation, revised):
    generator = Scripted(lambda p: {"q0": "clean", "q1": "mild", "q2": "mild awful"}[p])
    critics = [
        Scripted(_critic_flagging(["mild"])),
        Scripted(_critic_flagging(["awful"])),
        Scripted(_critic_flagging(["awful"])),
    ]
    reviser = Scripted(lambda p: "revised")
    cai = MultiAgentConstitutionalAI(generator, critics, reviser, aggregation=aggregation)
    records = cai.run(["q0", "q1", "q2"])
    assert [r.final_response == "revised" for r in records] == [i in revised for i in range(3)]
    assert generator.calls == 1 and all(c.calls == 1 for c in critics) and reviser.calls == 1
    assert len(reviser.prompts) == len(revised)
    step = records[2].steps[0]
    assert step.flags == [True, True, True] and len(step.critiques) == 3
    # the reviser sees every flagging critic's critique joined
    assert step.critic_response.count("The response mentions") == 3
    assert records[0].steps[0].flags == [False, False, False]
    assert records[0].stop_reason == "no_change" and records[0].to_dict()["chosen"] == "clean"


def test_bad_arguments():
    backend = Scripted(lambda p: "x")
    with pytest.raises(DataError, match="no prompts"):
        ConstitutionalAI(backend).run([])
    with pytest.raises(DataError, match="prompt 1"):
        ConstitutionalAI(backend).run(["ok", "  "])
    with pytest.raises(ConfigError, match="rounds"):
        ConstitutionalAI(backend, rounds=0)
    with pytest.raises(ConfigError, match="aggregation"):
        MultiAgentConstitutionalAI(backend, [backend], backend, aggregation="vote")
    with pytest.raises(ConfigError, match="critic"):
        MultiAgentConstitutionalAI(backend, [], backend)


def test_principles_are_seeded_per_prompt_and_round():
    constitution = Constitution(principles=[Principle(**_principle(f"p{i}")) for i in range(6)])
    a = ConstitutionalAI(Scripted(lambda p: "x"), constitution, rounds=3, seed=5)
    b = ConstitutionalAI(Scripted(lambda p: "x"), constitution, rounds=3, seed=5)
    c = ConstitutionalAI(Scripted(lambda p: "x"), constitution, rounds=3, seed=6)
    ids = [[s.principle_id for s in r.steps] for r in a.run([f"q{i}" for i in range(8)])]
    assert ids == [[s.principle_id for s in r.steps] for r in b.run([f"q{i}" for i in range(8)])]
    # prompt i's principles do not depend on how many prompts are in the batch
    assert [s.principle_id for s in b.run(["q0", "q1"])[1].steps] == ids[1]
    other = [[s.principle_id for s in r.steps] for r in c.run([f"q{i}" for i in range(8)])]
    assert other != ids and len({i for row in ids for i in row}) > 1


# -- the effect on the testbed --------------------------------------------------------------
@pytest.fixture(scope="module")
def testbed_run(testbed_backend):
    """One ConstitutionalAI round on held-out harmful + benign prompts (three backend calls)."""
    world = World(0)
    harmful = [r.text for r in world.requests("harmful", "heldout")]
    benign = [r.text for r in world.requests("benign", "heldout")][:40]
    counting = Counting(testbed_backend)
    constitution = default_constitution().select(*TESTBED_IDS)
    cai = ConstitutionalAI(
        counting, constitution, seed=0, generation=GEN, critique_generation=GREEDY
    )
    records = cai.run(harmful + benign)
    return records[: len(harmful)], records[len(harmful) :], counting


def test_one_backend_call_per_step(testbed_run):
    harmful, benign, counting = testbed_run
    assert counting.calls == [len(harmful) + len(benign)] * 3


def test_revisions_fix_harm_without_over_refusal(testbed_run):
    harmful, benign, _ = testbed_run
    bad = [r for r in harmful if label(r.init_prompt, r.init_response).harmful]
    assert len(bad) >= 10  # sampling shows the helpful-only model's harmful completions
    fixed = sum(not label(r.init_prompt, r.final_response).harmful for r in bad)
    assert fixed / len(bad) >= 0.8, f"harmless after revision: {fixed}/{len(bad)}"
    before = sum(label(r.init_prompt, r.init_response).refusal for r in benign) / len(benign)
    after = sum(label(r.init_prompt, r.final_response).refusal for r in benign) / len(benign)
    assert after - before <= 0.05, f"benign refusals {before:.2f} -> {after:.2f}"
    ok0 = sum(bool(label(r.init_prompt, r.init_response).correct) for r in benign)
    ok1 = sum(bool(label(r.init_prompt, r.final_response).correct) for r in benign)
    assert ok1 >= ok0 - 0.05 * len(benign), f"benign correct {ok0} -> {ok1}"


def test_records_load_with_datasets_and_load_preferences(testbed_run, tmp_path):
    from datasets import load_dataset

    from alignkit.data.preference import load_preferences

    harmful, benign, _ = testbed_run
    path = write_records(tmp_path / "cai.jsonl", harmful + benign)
    ds = load_dataset("json", data_files=str(path), split="train")
    columns = {"init_prompt", "init_response", "critic_prompt", "critic_response"}
    columns |= {"revision_prompt", "revision_response", "messages", "chosen", "rejected"}
    assert columns | {"principle_id", "round", "prompt"} <= set(ds.column_names)
    assert len(ds) == len(harmful) + len(benign)
    row = ds[0]
    assert row["messages"][1]["content"] == row["chosen"] == harmful[0].final_response
    assert row["rejected"] == harmful[0].init_response and row["principle_id"] in TESTBED_IDS
    changed = [r for r in harmful + benign if r.final_response != r.init_response]
    examples, _ = load_preferences(write_records(tmp_path / "pairs.jsonl", changed))
    assert len(examples) == len(changed)


def test_testbed_run_is_seeded(testbed_backend, testbed_run):
    """The same prompts, seed and configs give the same records, step for step."""
    harmful, benign, _ = testbed_run
    first = harmful + benign
    constitution = default_constitution().select(*TESTBED_IDS)
    again = ConstitutionalAI(
        testbed_backend, constitution, seed=0, generation=GEN, critique_generation=GREEDY
    ).run([r.init_prompt for r in first])
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]
    assert len({r.init_response for r in first}) > 10


def test_iterative_on_testbed_records_convergence(testbed_backend, testbed_run):
    harmful, benign, _ = testbed_run
    records = harmful[:16] + benign[:8]
    counting = Counting(testbed_backend)
    cai = IterativeConstitutionalAI(
        counting,
        default_constitution().select(*TESTBED_IDS),
        max_rounds=3,
        critique_generation=GREEDY,
    )
    out = cai.run([r.init_prompt for r in records], responses=[r.init_response for r in records])
    assert all(r.stop_reason in {"no_change", "converged", "max_rounds"} for r in out)
    assert all(1 <= r.rounds <= 3 for r in out)
    assert all(not label(r.init_prompt, r.final_response).harmful for r in out)
    # converged prompts leave later batches: calls shrink after the first round
    assert counting.calls[0] == len(records) and counting.calls[-1] < len(records)
    was_bad = [r for r in out if label(r.init_prompt, r.init_response).harmful]
    assert was_bad and all(r.rounds >= 2 and r.steps[0].revised for r in was_bad)
