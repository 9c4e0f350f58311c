"""The world whose train / held-out split every testbed draw keeps to.

A :class:`~alignkit.testbed.world.World`'s seed decides which requests are held out. The built-in
testbed model learnt the train split of ``World(MODEL_WORLD_SEED)``; another seed splits the same
requests differently (``World(1)``'s held-out preference pairs: 40 of 64 prompts in ``World(0)``'s
train split, 26 of them verbatim in a ``World(0)`` training set). So evaluation suites, preference
data, behaviour measurements, red-team behaviours and safety data draw from this world, and their
own seed only picks the draw.
"""

from __future__ import annotations

from alignkit.testbed.build import TestbedConfig

MODEL_WORLD_SEED: int = TestbedConfig.model_fields["seed"].default
"""The seed of the world the built-in testbed model is trained on (``TestbedConfig().seed``)."""


def model_world():
    """``World(MODEL_WORLD_SEED)``: held-out prompts of this world are unseen by the testbed."""
    from alignkit.testbed.world import World

    return World(MODEL_WORLD_SEED)
