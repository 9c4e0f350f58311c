"""Deterministic, length-bucketed batch order for an epoch (little padding, resumable)."""

from __future__ import annotations

import random


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, bucket: int = 32
) -> list[list[int]]:
    """Batches of example indices for ``epoch``: shuffled, then sorted by length within groups
    of ``bucket`` batches so each batch holds similar lengths, then shuffled again.

    The order depends only on ``(lengths, batch_size, seed, epoch)``, so a resumed run sees
    exactly the batches an uninterrupted run would. The last batch is filled up with examples
    from the start of the epoch, so every batch (and every process's share of it) is full.
    """
    rng = random.Random(f"alignkit-batches-{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order += [order[i % len(order)] for i in range(-len(order) % batch_size)]
    batches: list[list[int]] = []
    span = batch_size * bucket
    for start in range(0, len(order), span):
        group = sorted(order[start : start + span], key=lambda i: lengths[i])
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches
