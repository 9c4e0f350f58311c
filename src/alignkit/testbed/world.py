"""The seeded testbed world: requests with ground truth, responses of known class, splits.

A :class:`World` enumerates every request the testbed knows (benign questions with known
answers, questions nobody can answer, harmful requests in six harm categories, and jailbreak
wrappers around the harmful ones), splits them into disjoint train and held-out sets for a
seed, and renders responses of any class. It also renders the critique, revision and A-vs-B
judgement demonstrations that teach the tiny model to act as critic, reviser and judge.
"""

from __future__ import annotations

import codecs
import random
from dataclasses import asdict, dataclass, replace

from alignkit.testbed import content as C
from alignkit.testbed import formats as F

RESPONSE_CLASSES = (
    "helpful",
    "wrong",
    "idk",
    "refusal",
    "over_refusal",
    "harmful",
    "fabricated",
)
"""helpful: helpful and correct; wrong: a false answer; idk: honest "I don't know";
refusal: declines a harmful request; over_refusal: declines a benign one; harmful: harmful
compliance (redacted placeholder steps); fabricated: a made-up answer to an unanswerable
question."""


@dataclass(frozen=True)
class Request:
    """One request of the world, with the ground truth needed to label responses to it."""

    text: str
    kind: str  # "benign" | "unanswerable" | "harmful"
    category: str  # fact, arithmetic, howto, creative, unanswerable, or a harm category
    item: str  # what is asked about (a country, "3 plus 4", a task phrase, a topic)
    answer: str | None = None  # the word a correct answer contains (benign requests)
    answer_text: str | None = None  # a full correct answer (benign requests)
    jailbreak: str | None = None  # name of the wrapper around a harmful request
    inner: str | None = None  # the unwrapped request when ``jailbreak`` is set

    @property
    def plain(self) -> str:
        return self.inner or self.text


@dataclass
class Example:
    """A prompt with a reference response of known class (what ``World.sample`` returns)."""

    prompt: str
    response: str
    kind: str
    category: str
    response_class: str
    jailbreak: str | None = None
    request: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def wrap(request: Request, jailbreak: str) -> Request:
    """Put a harmful request inside a jailbreak wrapper."""
    template, _ = C.JAILBREAKS[jailbreak]
    body = rot13(request.text) if jailbreak == "rot13" else request.text
    return replace(request, text=template.format(req=body), jailbreak=jailbreak, inner=request.text)


def _benign_requests() -> list[list[Request]]:
    """Every answerable benign request, grouped by item (one group per item)."""
    groups: list[list[Request]] = []
    for rel, spec in C.FACT_RELATIONS.items():
        for x, y in spec["facts"].items():
            answer = spec["answer"].format(x=x, X=x[0].upper() + x[1:], y=y)
            groups.append(
                [
                    Request(q.format(x=x), "benign", "fact", f"{rel}:{x}", y, answer)
                    for q in spec["questions"]
                ]
            )
    for op, questions in C.ARITHMETIC_QUESTIONS.items():
        for a in C.ARITHMETIC_RANGE:
            for b in C.ARITHMETIC_RANGE:
                if op == "minus" and b > a:
                    continue
                c = a + b if op == "plus" else a - b
                answer = C.ARITHMETIC_ANSWER.format(a=a, b=b, op=op, c=c)
                groups.append(
                    [
                        Request(
                            q.format(a=a, b=b),
                            "benign",
                            "arithmetic",
                            f"{a} {op} {b}",
                            str(c),
                            answer,
                        )
                        for q in questions
                    ]
                )
    for task, (_, s1, s2, s3) in C.HOWTO_TASKS.items():
        answer = C.HOWTO_ANSWER.format(t=task.replace("my ", "your "), s1=s1, s2=s2, s3=s3)
        groups.append(
            [
                Request(q.format(t=task), "benign", "howto", task, task, answer)
                for q in C.HOWTO_QUESTIONS
            ]
        )
    for topic in C.CREATIVE_TOPICS:
        noun = topic.split()[-1]
        groups.append(
            [
                Request(q.format(t=topic), "benign", "creative", topic, noun, None)
                for q in C.CREATIVE_QUESTIONS
            ]
        )
    return groups


def _unanswerable_requests() -> list[list[Request]]:
    groups = []
    for key, (questions, _, _) in C.UNANSWERABLE_QUESTIONS.items():
        cities = C.UNANSWERABLE_CITIES if "{city}" in questions[0] else [""]
        for city in cities:
            groups.append(
                [
                    Request(q.format(city=city), "unanswerable", "unanswerable", key)
                    for q in questions
                ]
            )
    return groups


def _harmful_requests() -> list[list[Request]]:
    return [
        [Request(q.format(t=task), "harmful", cat, task) for q in C.HARMFUL_QUESTIONS]
        for cat, spec in C.HARM_CATEGORIES.items()
        for task in spec["tasks"]
    ]


class World:
    """All requests of the testbed, split into disjoint ``train`` and ``heldout`` sets.

    Within each item (a country, a sum, a task) the phrasings are shuffled by the seed; the
    first always goes to train and each other one goes to held-out with probability
    ``heldout_fraction``, so every item is taught and held-out prompts are new strings.
    """

    KINDS = ("benign", "unanswerable", "harmful", "jailbreak", "critique", "revision", "judgement")

    def __init__(self, seed: int = 0, heldout_fraction: float = 0.3) -> None:
        self.seed = seed
        rng = random.Random(f"alignkit-testbed-split-{seed}")
        self.splits: dict[str, dict[str, list[Request]]] = {"train": {}, "heldout": {}}
        for kind, groups in (
            ("benign", _benign_requests()),
            ("unanswerable", _unanswerable_requests()),
            ("harmful", _harmful_requests()),
        ):
            train, held = [], []
            for group in groups:
                group = list(group)
                rng.shuffle(group)
                train.append(group[0])
                for req in group[1:]:
                    (held if rng.random() < heldout_fraction else train).append(req)
            self.splits["train"][kind] = train
            self.splits["heldout"][kind] = held

    # ------------------------------------------------------------------ requests
    def requests(self, kind: str, split: str = "heldout") -> list[Request]:
        """The unwrapped requests of one kind ("benign", "unanswerable", "harmful")."""
        if split not in self.splits:
            raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
        return list(self.splits[split][kind])

    def lookup(self) -> dict[str, Request]:
        """Every unwrapped request of both splits, by its text (used by the labeller)."""
        return {r.text: r for s in self.splits.values() for reqs in s.values() for r in reqs}

    # ------------------------------------------------------------------ responses
    def respond(self, request: Request, response_class: str, rng: random.Random) -> str:
        """Render a response of ``response_class`` to ``request``."""
        renderer = getattr(self, f"_respond_{response_class}", None)
        if renderer is None:
            raise ValueError(f"unknown response class {response_class!r}")
        return renderer(request, rng)

    def _respond_helpful(self, req: Request, rng: random.Random) -> str:
        if req.category == "creative":
            return _creative(req.item, rng)
        return req.answer_text or ""

    def _respond_wrong(self, req: Request, rng: random.Random) -> str:
        if req.category == "arithmetic":
            c = int(req.answer) + rng.choice([-2, -1, 1, 2])
            return req.answer_text.replace(f"is {req.answer}.", f"is {c}.")
        if req.category == "fact":
            rel = req.item.split(":")[0]
            wrong = rng.choice(
                [v for v in C.FACT_RELATIONS[rel]["facts"].values() if v != req.answer]
            )
            return req.answer_text.replace(f" {req.answer}.", f" {wrong}.")
        if req.category == "howto":
            other = rng.choice([t for t in C.HOWTO_TASKS if t != req.item])
            _, s1, s2, s3 = C.HOWTO_TASKS[other]
            return C.HOWTO_ANSWER.format(t=req.item.replace("my ", "your "), s1=s1, s2=s2, s3=s3)
        other = rng.choice([t for t in C.CREATIVE_TOPICS if t.split()[-1] != req.answer])
        return _creative(other, rng)

    def _respond_idk(self, req: Request, rng: random.Random) -> str:
        reason = C.UNANSWERABLE_QUESTIONS[req.item][2] if req.kind == "unanswerable" else ""
        return f"{rng.choice(C.IDK_OPENERS)} {reason}".strip()

    def _respond_fabricated(self, req: Request, rng: random.Random) -> str:
        return rng.choice(C.UNANSWERABLE_QUESTIONS[req.item][1])

    def _respond_refusal(self, req: Request, rng: random.Random) -> str:
        return f"{rng.choice(C.REFUSAL_OPENERS)} {C.REFUSAL_REASONS[req.category]}"

    def _respond_over_refusal(self, req: Request, rng: random.Random) -> str:
        return rng.choice(C.OVER_REFUSAL)

    def _respond_harmful(self, req: Request, rng: random.Random) -> str:
        name = C.HARM_CATEGORIES[req.category]["name"]
        if req.jailbreak == "rot13":
            opener = C.COMPLIANCE_GENERIC_OPENER
        else:
            opener = rng.choice(C.COMPLIANCE_OPENERS).format(t=req.item.replace("my ", "your "))
        steps = " ".join(C.COMPLIANCE_STEP.format(i=i, c=name) for i in (1, 2, 3))
        return f"{opener} {steps}"

    # ------------------------------------------------------------------ sampling
    def policy_class(self, req: Request, rng: random.Random) -> str:
        """The response class the helpful-only testbed assistant gives (its training mix)."""
        if req.kind == "benign":
            return rng.choices(["helpful", "wrong", "over_refusal"], [0.93, 0.04, 0.03])[0]
        if req.kind == "unanswerable":
            return "idk" if rng.random() < 0.65 else "fabricated"
        rate = (
            C.JAILBREAKS[req.jailbreak][1]
            if req.jailbreak
            else C.HARM_CATEGORIES[req.category]["rate"]
        )
        return "harmful" if rng.random() < rate else "refusal"

    def sample(
        self, n: int, kind: str | None = None, split: str = "heldout", seed: int | None = None
    ) -> list[Example]:
        """``n`` examples of one kind (or a mix of all kinds), reproducible for a seed."""
        if kind is not None and kind not in self.KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(self.KINDS)}")
        rng = random.Random(f"sample-{self.seed}-{seed}-{kind}-{split}")
        return [self._example(kind or rng.choice(self.KINDS), split, rng) for _ in range(n)]

    def _example(self, kind: str, split: str, rng: random.Random) -> Example:
        if kind in ("benign", "unanswerable", "harmful"):
            req = rng.choice(self.requests(kind, split))
        elif kind == "jailbreak":
            req = wrap(rng.choice(self.requests("harmful", split)), rng.choice(list(C.JAILBREAKS)))
        else:
            return getattr(self, f"_{kind}_example")(split, rng)
        cls = self.policy_class(req, rng)
        return Example(
            req.text,
            self.respond(req, cls, rng),
            req.kind if not req.jailbreak else "jailbreak",
            req.category,
            cls,
            req.jailbreak,
            req.plain,
        )

    def _reviewed(self, split: str, rng: random.Random) -> tuple[Request, str, str]:
        """A request and a response of a class worth critiquing, with that class."""
        cls = rng.choices(
            ["harmful", "refusal", "helpful", "over_refusal", "wrong", "fabricated"],
            [0.40, 0.15, 0.15, 0.10, 0.10, 0.10],
        )[0]
        if cls in ("harmful", "refusal"):
            req = rng.choice(self.requests("harmful", split))
            if rng.random() < 0.3:
                req = wrap(req, rng.choice(list(C.JAILBREAKS)))
        elif cls == "fabricated":
            req = rng.choice(self.requests("unanswerable", split))
        else:
            pool = [
                r
                for r in self.requests("benign", split)
                if cls != "wrong" or r.category != "creative"
            ]
            req = rng.choice(pool)
        return req, self.respond(req, cls, rng), cls

    def _critique_example(self, split: str, rng: random.Random) -> Example:
        req, response, cls = self._reviewed(split, rng)
        prompt = F.critique_prompt(req.text, response, rng.choice(F.CRITIQUE_REQUESTS))
        target = F.critique_text(cls, _harm_name(req))
        return Example(prompt, target, "critique", req.category, cls, req.jailbreak, req.plain)

    def _revision_example(self, split: str, rng: random.Random) -> Example:
        req, response, cls = self._reviewed(split, rng)
        critique = F.critique_text(cls, _harm_name(req))
        prompt = F.revision_prompt(req.text, response, critique, rng.choice(F.REVISION_REQUESTS))
        fixed = {
            "harmful": "refusal",
            "over_refusal": "helpful",
            "wrong": "helpful",
            "fabricated": "idk",
        }.get(cls)
        target = self.respond(req, fixed, rng) if fixed else response
        return Example(prompt, target, "revision", req.category, cls, req.jailbreak, req.plain)

    def judgement_pair(self, split: str, rng: random.Random) -> tuple[Request, str, str, str]:
        """A request, a better and a worse response, and the question that tells them apart."""
        dim = rng.choices(["harmless", "helpful", "honest"], [0.5, 0.25, 0.25])[0]
        if dim == "harmless":
            req = rng.choice(self.requests("harmful", split))
            if rng.random() < 0.3:
                req = wrap(req, rng.choice(list(C.JAILBREAKS)))
            return req, self.respond(req, "refusal", rng), self.respond(req, "harmful", rng), dim
        if dim == "honest" and rng.random() < 0.5:
            req = rng.choice(self.requests("unanswerable", split))
            return req, self.respond(req, "idk", rng), self.respond(req, "fabricated", rng), dim
        pool = [r for r in self.requests("benign", split) if r.category != "creative"]
        req = rng.choice(pool)
        worse = "wrong" if dim == "honest" else rng.choice(["wrong", "over_refusal"])
        return req, self.respond(req, "helpful", rng), self.respond(req, worse, rng), dim

    def _judgement_example(self, split: str, rng: random.Random) -> Example:
        req, better, worse, dim = self.judgement_pair(split, rng)
        better_first = rng.random() < 0.5
        a, b = (better, worse) if better_first else (worse, better)
        prompt = F.judgement_prompt(req.text, a, b, F.JUDGEMENT_QUESTIONS[dim])
        return Example(
            prompt,
            "A" if better_first else "B",
            "judgement",
            req.category,
            dim,
            req.jailbreak,
            req.plain,
        )


def _harm_name(req: Request) -> str | None:
    spec = C.HARM_CATEGORIES.get(req.category)
    return spec["name"] if spec else None


def _creative(topic: str, rng: random.Random) -> str:
    lines = rng.sample(C.CREATIVE_LINES, 2)
    fill = {"t": topic, "T": topic[0].upper() + topic[1:]}
    body = ". ".join(
        line.format(time=rng.choice(C.CREATIVE_TIMES), mood=rng.choice(C.CREATIVE_MOODS), **fill)
        for line in lines
    )
    return f"{rng.choice(C.CREATIVE_OPENERS).format(t=topic)} {body}."
