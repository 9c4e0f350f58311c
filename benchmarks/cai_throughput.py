"""Constitutional AI throughput: the batched critique-and-revise loop vs one prompt at a time.

Runs :class:`~alignkit.constitutional.ConstitutionalAI` both ways in one process, on the same
backend, prompts, principles and settings: ``batched`` is one ``run(prompts)`` call (each step,
initial response, critique and revision, is one backend call across all prompts), ``one at a
time`` is ``run([prompt])`` per prompt. Prompts are the testbed world's held-out harmful and
benign requests, alternating; the constitution is the three principles whose texts the testbed
model was trained on. Everything is greedy (initial responses too), and the one-at-a-time loop
draws the same principle for each prompt as the batched one (principles are drawn per prompt
index), so the two modes should write the same revisions; left-padded batches can differ in the
last float bits, so a few may not, and the script reports how many match (it does not assert).

Prints wall seconds (median of ``--repeats`` interleaved runs, model loading and a warm-up
excluded), prompts per second and the speedup (one-at-a-time wall / batched wall; the issue's
target is >= 5x). CPU runs use ``--threads`` torch threads (default 1). Run by hand, not part
of the tests::

    python benchmarks/cai_throughput.py                          # testbed, 64 prompts, 1 round
    python benchmarks/cai_throughput.py --n 128 --rounds 2 --repeats 3 --json cai.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from generation import median_run, timed  # benchmarks/generation.py, beside this script
from rich.console import Console
from rich.table import Table

from alignkit.constitutional import CAIRecord, ConstitutionalAI, default_constitution
from alignkit.models import GenerationConfig, load_backend
from alignkit.testbed import World

PRINCIPLES = ("harm-general", "harm-honesty-helpfulness", "safe-honest-helpful")
"""The principles whose critique / revision texts the testbed model was trained on."""


def make_prompts(n: int) -> list[str]:
    """``n`` held-out testbed requests: harmful and benign alternating, then the rest."""
    world = World(0)
    harmful = [r.text for r in world.requests("harmful", split="heldout")]
    benign = [r.text for r in world.requests("benign", split="heldout")]
    pairs = [p for pair in zip(harmful, benign, strict=False) for p in pair]
    k = min(len(harmful), len(benign))
    pool = pairs + harmful[k:] + benign[k:]
    if n > len(pool):
        raise SystemExit(f"--n {n}: the testbed has only {len(pool)} such held-out prompts")
    return pool[:n]


def run_batched(cai: ConstitutionalAI, prompts: list[str]) -> list[CAIRecord]:
    """The whole loop over all prompts in one ``run`` call."""
    cai.principle_keys = None  # principles drawn by position: prompt k gets key k
    return cai.run(prompts)


def run_single(cai: ConstitutionalAI, prompts: list[str]) -> list[CAIRecord]:
    """The loop once per prompt, each under its batched-run principle (key = its position)."""
    records = []
    for k, prompt in enumerate(prompts):
        cai.principle_keys = [str(k)]
        records.extend(cai.run([prompt]))
    cai.principle_keys = None
    return records


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed", help="model string (default: testbed)")
    parser.add_argument("--n", type=int, default=64, help="number of prompts")
    parser.add_argument("--rounds", type=int, default=1, help="critique-revision rounds")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="for every step")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run both modes and print the table."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    backend = load_backend(args.model, batch_size=args.batch_size, device=args.device)
    prompts = make_prompts(args.n)
    greedy = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=0)
    cai = ConstitutionalAI(
        backend,
        default_constitution().select(*PRINCIPLES),
        rounds=args.rounds,
        seed=0,
        generation=greedy,
        critique_generation=greedy,
    )
    run_batched(cai, prompts[:2])  # warm-up

    # Interleaved repeats, median of each: this shared machine's load drifts between runs.
    batched_runs, single_runs = [], []
    for _ in range(args.repeats):
        batched_runs.append(timed(lambda: run_batched(cai, prompts)))
        single_runs.append(timed(lambda: run_single(cai, prompts)))
    batched_s, batched = median_run(batched_runs)
    single_s, single = median_run(single_runs)

    table = Table(
        title=f"Constitutional AI: {backend.name}, {len(prompts)} prompts, rounds={args.rounds}, "
        f"max_new_tokens={args.max_new_tokens}, threads={torch.get_num_threads()}, "
        f"median of {args.repeats}"
    )
    for column in ("mode", "batch size", "backend calls", "wall s", "prompts/s"):
        table.add_column(column, justify="right")
    calls = 1 + 2 * args.rounds
    for mode, size, n_calls, secs in (
        ("one at a time", 1, calls * len(prompts), single_s),
        ("batched", args.batch_size, calls, batched_s),
    ):
        table.add_row(mode, str(size), str(n_calls), f"{secs:.2f}", f"{len(prompts) / secs:.2f}")
    console.print(table)
    speedup = single_s / batched_s
    pairs = list(zip(batched, single, strict=True))
    same = sum(a.final_response == b.final_response for a, b in pairs)
    same_init = sum(a.init_response == b.init_response for a, b in pairs)
    console.print(f"speedup (one-at-a-time wall / batched wall): {speedup:.2f}x")
    console.print(f"identical final revisions: {same}/{len(prompts)}")
    console.print(f"identical initial responses: {same_init}/{len(prompts)}")
    if args.json:
        result = {
            "model": backend.name,
            "n": len(prompts),
            "rounds": args.rounds,
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "batched_s": [s for s, _ in batched_runs],
            "single_s": [s for s, _ in single_runs],
            "batched_median_s": batched_s,
            "single_median_s": single_s,
            "speedup": speedup,
            "identical_final": same,
            "identical_initial": same_init,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    backend.close()


if __name__ == "__main__":
    main()
