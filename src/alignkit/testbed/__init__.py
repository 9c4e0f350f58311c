"""The built-in testbed: a seeded assistant world with ground truth and a tiny model trained on it.

    from alignkit.testbed import World, label, ensure_testbed, measure_behaviour

- :class:`World` generates requests (benign, unanswerable, harmful, jailbroken) and responses
  of known class, plus critique / revision / A-vs-B demonstrations; train and held-out
  prompts are disjoint.
- :func:`label` is the ground-truth labeller for any (prompt, response).
- :func:`build_testbed` / :func:`ensure_testbed` train (or load from cache) the tiny Llama.
- :func:`measure_behaviour` reports how a model behaves on held-out prompts.
"""

from alignkit.testbed.behaviour import BehaviourReport, BehaviourRow, measure_behaviour
from alignkit.testbed.build import (
    TestbedConfig,
    build_testbed,
    ensure_testbed,
    is_built,
    testbed_dir,
)
from alignkit.testbed.labeller import Label, find_request, is_idk, is_refusal, label
from alignkit.testbed.world import RESPONSE_CLASSES, Example, Request, World, rot13, wrap

__all__ = [
    "RESPONSE_CLASSES",
    "BehaviourReport",
    "BehaviourRow",
    "Example",
    "Label",
    "Request",
    "TestbedConfig",
    "World",
    "build_testbed",
    "ensure_testbed",
    "find_request",
    "is_built",
    "is_idk",
    "is_refusal",
    "label",
    "measure_behaviour",
    "rot13",
    "testbed_dir",
    "wrap",
]
