"""Batched vs one-at-a-time greedy generation with alignkit's Hugging Face backend.

Runs both modes in one process, on the same model, prompts and settings, and prints wall time,
generated tokens per second and the speedup of batching. Run by hand, not part of the tests::

    python benchmarks/generation.py --model testbed --n 64 --max-new-tokens 48
    python benchmarks/generation.py --model hf:/path/to/model --batch-size 32
    python benchmarks/generation.py --model random:qwen2-0.5b --device cuda --dtype bfloat16 \
        --n 512 --max-new-tokens 256 --batch-size 128 --batched-only --repeats 1 --kv-cache static

Each run also prints the memory read by decoding (weights once per step, each row's keys and
values) over the wall time, as a fraction of the GPU's bandwidth (``decode_bound.py``).

Prompts come from the testbed world when the model is the testbed, else from a built-in list.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from alignkit.models import GenerationConfig, load_backend

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_bound import bandwidth_figures  # noqa: E402

GENERIC_PROMPTS = [
    "What is the capital of France?",
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about autumn leaves.",
    "What is 17 times 3?",
    "Give me three tips for sleeping better.",
    "How do I boil an egg?",
    "Summarise the plot of Romeo and Juliet in one sentence.",
    "What is the boiling point of water at sea level?",
    "Name a mammal that can fly.",
    "Write a short thank-you note to a teacher.",
    "How many legs does a spider have?",
    "Suggest a name for a friendly robot.",
    "What does a thermometer measure?",
    "Describe the colour green to someone who has never seen it.",
    "Translate 'good morning' into Spanish.",
    "Why do we have seasons?",
]


def testbed_prompts(n: int) -> list[str] | None:
    """``n`` held-out testbed prompts, or None when the testbed world is not available."""
    try:
        from alignkit.testbed import World

        return [e.prompt for e in World(seed=0).sample(n, split="heldout", seed=0)]
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def make_prompts(model: str, n: int) -> list[str]:
    """``n`` prompts: testbed prompts for the testbed, else the generic list (cycled)."""
    prompts = testbed_prompts(n) if model == "testbed" else None
    if prompts:
        return prompts
    return [
        GENERIC_PROMPTS[i % len(GENERIC_PROMPTS)] + ("" if i < len(GENERIC_PROMPTS) else f" ({i})")
        for i in range(n)
    ]


def timed(fn) -> tuple[float, list]:
    """Run ``fn()`` and return ``(seconds, result)``."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median_run(runs: list[tuple[float, list]]) -> tuple[float, list]:
    """The run with the median time (its outputs come with it)."""
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def compare(console: Console, args, run: tuple[float, list], other: tuple[float, list]) -> None:
    """Print both caches' batched tokens/s, their ratio and how many completions agree."""
    rates = []
    for name, (secs, outs) in ((args.kv_cache, run), (args.compare_with, other)):
        tokens = sum(c.num_tokens for c in outs)
        rates.append(tokens / secs)
        console.print(f"{name} cache, batch {args.batch_size}: {tokens} tokens in {secs:.2f} s: "
                      f"{tokens / secs:,.1f} tokens/s")  # fmt: skip
    same = sum(a.text == b.text for a, b in zip(run[1], other[1], strict=True))
    console.print(f"{args.kv_cache} / {args.compare_with}: {rates[0] / rates[1]:.2f}x tokens/s; "
                  f"identical completions {same}/{len(run[1])}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run both modes and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed", help="model string (default: testbed)")
    parser.add_argument("--n", type=int, default=64, help="number of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--batched-only", action="store_true", help="skip one-at-a-time (large --n on GPUs)"
    )
    parser.add_argument(
        "--kv-cache", choices=["dynamic", "static", "paged"], default="dynamic",
        help="static: preallocated cache, decoding steps compiled into CUDA graphs on CUDA; "
        "paged: transformers' continuous batching",
    )  # fmt: skip
    parser.add_argument(
        "--compare-with", choices=["dynamic", "static", "paged"],
        help="also time this KV cache, batched, interleaved with --kv-cache: prints the ratio",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--peak-gbps", type=float, help="memory bandwidth (default: by GPU name)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    console = Console()
    model = args.model
    if model.startswith("random:"):  # a random model of a real shape (dpo_vs_trl's SHAPES)
        from dpo_vs_trl import build_random_model

        directory = Path(tempfile.mkdtemp(prefix="generation-model-"))
        model = "hf:" + str(build_random_model(model.split(":", 1)[1], directory, seed=0))
    backend = load_backend(model, batch_size=args.batch_size, device=args.device,
                           dtype=args.dtype, kv_cache=args.kv_cache)  # fmt: skip
    prompts = make_prompts(args.model, args.n)
    config = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    # warm-up; with a static cache, every batch shape of the run, so compiling is not timed
    warm = prompts if args.kv_cache == "static" else prompts[:2]
    warm_tokens = args.max_new_tokens if args.kv_cache == "static" else 4
    backend.generate(warm, config.model_copy(update={"max_new_tokens": warm_tokens}))

    other = None
    if args.compare_with:
        other = load_backend(model, batch_size=args.batch_size, device=args.device,
                             dtype=args.dtype, kv_cache=args.compare_with)  # fmt: skip
        other.generate(warm, config.model_copy(update={"max_new_tokens": warm_tokens}))

    # Interleaved repeats, median of each: this shared machine's load drifts between runs.
    batched_runs, single_runs, other_runs = [], [], []
    for _ in range(args.repeats):
        batched_runs.append(timed(lambda: backend.generate(prompts, config, progress=False)))
        if other is not None:
            other_runs.append(timed(lambda: other.generate(prompts, config, progress=False)))
        if not args.batched_only:
            single_runs.append(timed(lambda: [backend.generate([p], config)[0] for p in prompts]))
    batched_s, batched = median_run(batched_runs)
    tokens = sum(c.num_tokens for c in batched)
    bound = bandwidth_figures(backend, prompts, batched, batched_s, args.batch_size, args.peak_gbps)
    if args.json:
        figures = {"prompts": len(prompts), "tokens": tokens, "seconds": batched_s,
                   "tokens_per_s": tokens / batched_s, "batch_size": args.batch_size,
                   "kv_cache": args.kv_cache, "device": str(backend.device), **bound}  # fmt: skip
        args.json.write_text(json.dumps(figures))
    fraction = bound["bandwidth_fraction"]
    console.print(f"memory read {bound['bytes_read'] / 1e9:,.1f} GB in {bound['decode_steps']} "
                  f"decoding steps: {bound['achieved_gbps']:,.1f} GB/s"
                  + (f", {fraction:.1%} of the {bound['peak_gbps']:,.0f} GB/s peak" if fraction
                     else " (peak unknown: --peak-gbps)"))  # fmt: skip
    if other is not None:
        compare(console, args, (batched_s, batched), median_run(other_runs))
        other.close()
    if args.batched_only:
        console.print(f"batched ({args.batch_size}, {args.kv_cache} cache): {len(prompts)} "
                      f"prompts, {tokens} tokens in {batched_s:.2f} s: "
                      f"{tokens / batched_s:,.1f} tokens/s")  # fmt: skip
        backend.close()
        return
    single_s, single = median_run(single_runs)

    table = Table(
        title=f"generation (temperature {args.temperature}, {args.kv_cache} cache): "
        f"{backend.name}, {len(prompts)} prompts, "
        f"max_new_tokens={args.max_new_tokens}, device={backend.device}, "
        f"median of {args.repeats}"
    )
    for column in ("mode", "batch size", "wall s", "tokens", "tokens/s"):
        table.add_column(column, justify="right")
    for mode, size, secs, outs in (
        ("one at a time", 1, single_s, single),
        ("batched", args.batch_size, batched_s, batched),
    ):
        tokens = sum(c.num_tokens for c in outs)
        table.add_row(mode, str(size), f"{secs:.2f}", str(tokens), f"{tokens / secs:.1f}")
    console.print(table)
    same = sum(a.text == b.text for a, b in zip(batched, single, strict=True))
    console.print(f"speedup (one-at-a-time wall / batched wall): {single_s / batched_s:.2f}x")
    console.print(f"identical completions: {same}/{len(prompts)}")
    backend.close()


if __name__ == "__main__":
    main()
