"""alignkit's DPOTrainer against TRL's DPOTrainer, side by side on the same work.

The variants train the same model on the same preference pairs with the same batch size,
learning rate, beta, number of optimizer steps, max length, optimizer (AdamW, no weight decay),
schedule (linear decay, no warmup), gradient clipping (1.0), seed and precision:

- ``alignkit``: alignkit's ``DPOTrainer`` with its default ``precompute_ref=True``;
- ``alignkit-shared``: the same with ``prefix_sharing=True`` (each prompt computed once for
  chosen and rejected, pairs packed into rows);
- ``alignkit-shared-flex``: prefix sharing with FlexAttention block masks (GPUs only);
- ``alignkit-compile``: the same with ``compile=True`` (each decoder layer compiled; the
  compiler's time is inside the training loop's);
- ``trl``: TRL's ``DPOTrainer`` with its default reference handling (a frozen reference model
  run forward on every batch);
- ``trl-precompute``: TRL with ``precompute_ref_log_probs=True``;
- ``trl-liger``: TRL with precompute and ``use_liger_kernel=True`` (GPUs only).

TRL gets the pairs as chat messages, so it renders them with the same chat template and the
benchmark checks that both tools tokenize them to the same ids. Gradient checkpointing is off
for all (alignkit's default; TRL defaults it on, which trades speed for memory), TRL's bf16
default follows ``--dtype``, nothing is evaluated, saved mid-run or reported, and the data
loader has no workers. CPU runs use ``--threads`` threads each (default 1: two threads on two
shared cores collapse when anything else runs). Each variant runs in its own fresh process
(this script re-invoked with ``--variant``), one after the other, interleaved when repeated;
medians are reported.

Throughput counts the prompt + completion tokens of every sequence the policy processed
(counted from the data fed to the model, the same way for all) over the training loop's wall
time; for the precompute variants it is also given with the precomputation time added, and
that end-to-end figure is the headline (the conservative one: a first run with no cache).
Peak memory: on GPU ``torch.cuda.max_memory_allocated``; on CPU the growth of the process's
resident-set high-water mark from just before the trainer is built to the end of training
(see ``dpo_bench_variants.PeakMemory``). Run by hand, not part of the tests::

    python benchmarks/dpo_vs_trl.py          # testbed, CPU fp32, 64 steps x 8, median of 3
    python benchmarks/dpo_vs_trl.py --repeats 1 --markdown --json results.json
    python benchmarks/dpo_vs_trl.py --device cuda --dtype bf16 --model random:qwen2-0.5b
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("alignkit", "alignkit-shared", "alignkit-shared-flex", "alignkit-compile", "trl",
            "trl-precompute", "trl-liger")  # fmt: skip
# TRL 1.16's padding_free is disabled since its DPO refactor (it warns and pads): not a variant.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, by GPU name

# Randomly initialised model shapes (weights are random: a speed / memory benchmark only).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-0.5b": {  # the shape of Qwen2-0.5B
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_theta": 1_000_000.0,
    },
    "qwen2-small": {  # the same vocabulary on a small body: a quick check of the large-vocab path
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "rope_theta": 1_000_000.0,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="testbed",
        help="testbed, a local HF model directory, or random:SHAPE (" + ", ".join(SHAPES) + ")",
    )
    parser.add_argument(
        "--data",
        choices=("testbed", "realistic"),
        default="testbed",
        help="testbed preference pairs, or pairs with the length profile of real preference "
        "data (see realistic_pairs)",
    )
    parser.add_argument("--pairs", type=int, default=512, help="preference pairs")
    parser.add_argument("--steps", type=int, default=64, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument(
        "--max-length", type=int, help="tokens per sequence (default: 512 testbed, 2048 realistic)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on for all three")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of each run (torch and OpenMP)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant (medians)")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak dense TFLOP/s for MFU (default on CUDA: by GPU name, "
        + ", ".join(f"{k} {v:g}" for k, v in PEAK_TFLOPS.items())
        + " in bf16; CPU: no MFU unless given)",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    parser.add_argument("--last", type=int, default=8, help="final loss/accuracy: mean of last N")
    parser.add_argument("--json", type=Path, help="also write all measurements here")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--options", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ set-up


def build_random_model(shape: str, directory: Path, seed: int) -> Path:
    """A randomly initialised Qwen2-shaped model with the testbed's tokenizer and template."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from alignkit.testbed import ensure_testbed

    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    tokenizer = AutoTokenizer.from_pretrained(ensure_testbed())
    config = Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


# The length profile of ``--data realistic`` (tokens under the testbed tokenizer): log-normal
# prompt and response lengths with the medians of public preference sets (prompts ~150, responses
# ~250-300 tokens), long tails, clipped to 1,024 each.
PROMPT_TOKENS = {"median": 150, "sigma": 0.6, "low": 16, "high": 1024}
RESPONSE_TOKENS = {"median": 270, "sigma": 0.5, "low": 8, "high": 1024}


def _length(rng, profile: dict[str, float]) -> int:
    import math

    drawn = rng.lognormvariate(math.log(profile["median"]), profile["sigma"])
    return int(min(max(drawn, profile["low"]), profile["high"]))


def realistic_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """``n`` pairs of seeded random words (one testbed token each) whose prompt, chosen and
    rejected lengths follow :data:`PROMPT_TOKENS` and :data:`RESPONSE_TOKENS` (drawn
    independently). The text is meaningless: a speed and memory benchmark only."""
    import random

    from transformers import AutoTokenizer

    from alignkit.testbed import ensure_testbed

    vocab = AutoTokenizer.from_pretrained(ensure_testbed()).get_vocab()
    words = sorted(t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isalpha())
    rng = random.Random(f"realistic-{seed}")

    def text(profile: dict[str, float]) -> str:
        return " ".join(rng.choices(words, k=_length(rng, profile)))

    return [
        {"prompt": text(PROMPT_TOKENS), "chosen": text(RESPONSE_TOKENS),
         "rejected": text(RESPONSE_TOKENS)}
        for _ in range(n)
    ]  # fmt: skip


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Write the preference pairs and resolve the model directory; the children's options."""
    from alignkit.testbed import World, ensure_testbed
    from alignkit.testbed.preferences import preference_pairs, write_jsonl

    data = workdir / "pairs.jsonl"
    if args.data == "realistic":
        write_jsonl(realistic_pairs(args.pairs, args.seed), data)
    else:
        write_jsonl(preference_pairs(World(0), args.pairs, split="train", seed=args.seed), data)
    if args.model == "testbed":
        model_dir = Path(ensure_testbed())
    elif args.model.startswith("random:"):
        model_dir = build_random_model(args.model.split(":", 1)[1], workdir / "model", args.seed)
    else:
        model_dir = Path(args.model.removeprefix("hf:"))
    return {
        "profile": length_profile(data, model_dir, args.max_length_or_default),
        "data": str(data),
        "model_dir": str(model_dir),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "beta": args.beta,
        "max_length": args.max_length_or_default,
        "seed": args.seed,
        "device": args.device,
        "dtype": args.dtype,
        "gradient_checkpointing": args.gradient_checkpointing,
        "threads": args.threads,
    }


def length_profile(data: Path, model_dir: Path, max_length: int) -> dict[str, Any]:
    """Median, 90th percentile and largest prompt and response lengths in tokens, as
    alignkit tokenizes the pairs (chat template included), and how many were truncated."""
    from transformers import AutoTokenizer

    from alignkit.data import DPODataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = DPODataset.from_file(data, tokenizer, max_length=max_length,
                                 max_prompt_length=max_length // 2)  # fmt: skip

    def quantiles(values: list[int]) -> str:
        values = sorted(values)
        return f"median {values[len(values) // 2]}, p90 {values[int(len(values) * 0.9)]}, " \
            f"max {values[-1]}"  # fmt: skip

    return {
        "prompt": quantiles([len(ex.prompt_ids) for ex in pairs.items]),
        "response": quantiles([len(c) for ex in pairs.items for c in ex.completion_ids]),
        "truncated": pairs.report.truncated_records,
    }


def model_stats(model_dir: str) -> dict[str, int]:
    """What the FLOP count needs: ``params`` N (every weight but a separate input embedding:
    the lookup costs no FLOPs, a tied embedding is the output head and counts once), layers and
    hidden size. The model is built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # shared (tied) tensors once
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    if output is None or output.weight is not embedding:
        params -= embedding.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {"params": params, "layers": text.num_hidden_layers, "hidden": text.hidden_size}


def training_flops(stats: dict[str, int], tokens: int, tokens_sq: int) -> float:
    """FLOPs of DPO on sequences with ``tokens`` tokens in all and sum of squared lengths
    ``tokens_sq``: 6N per token for the policy's forward and backward plus 2N for the
    reference forward (8N), and attention 12 x layers x hidden x L per token for the policy
    plus 4 x ... for the reference (PaLM's count, causal mask not halved)."""
    return 8 * stats["params"] * tokens + 16 * stats["layers"] * stats["hidden"] * tokens_sq


def peak_flops(args: argparse.Namespace) -> float | None:
    """The device's peak FLOP/s for MFU: ``--peak-tflops``, or on CUDA by the GPU's name."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device.startswith("cuda"):
        import torch

        name = torch.cuda.get_device_name()
        for key, tflops in PEAK_TFLOPS.items():
            if key in name and args.dtype == "bf16":
                return tflops * 1e12
    return None


def unavailable(variant: str, args: argparse.Namespace) -> str | None:
    """Why ``variant`` cannot run here, or None."""
    import importlib.util

    if variant == "alignkit-shared-flex" and not args.device.startswith("cuda"):
        return "FlexAttention has no backward on CPU"
    if variant == "trl-liger":
        if not args.device.startswith("cuda"):
            return "Liger-Kernel's kernels are Triton kernels (GPU only)"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel is not installed (pip install liger-kernel)"
    return None


def run_child(variant: str, opts: dict[str, Any], workdir: Path, run: int) -> dict[str, Any]:
    """Run one variant in a fresh process with fresh caches; its measurements, or
    ``{"failed": why}`` (its log's tail printed) so that the other variants still run."""
    here = workdir / f"{variant}-{run}"
    here.mkdir()
    opts = {**opts, "output_dir": str(here / "out")}
    (here / "options.json").write_text(json.dumps(opts))
    env = {
        **os.environ,
        "ALIGNKIT_CACHE": str(here / "alignkit-cache"),  # no reference log-probs from earlier runs
        "HF_DATASETS_CACHE": str(here / "hf-datasets"),
        "TQDM_DISABLE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(opts["threads"]),
        "MKL_NUM_THREADS": str(opts["threads"]),
    }
    cmd = [sys.executable, __file__, "--variant", variant]
    cmd += ["--options", str(here / "options.json"), "--result", str(here / "result.json")]
    with (here / "log.txt").open("w") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = (here / "log.txt").read_text()[-6000:]
        sys.stderr.write(tail)
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        return {"failed": f"failed (exit {done.returncode}): {last.strip()[:200]}"}
    return json.loads((here / "result.json").read_text())


# ----------------------------------------------------------------------------- summary


def summarise(
    runs: list[dict[str, Any]], last: int, stats: dict[str, int], peak: float | None
) -> dict[str, Any]:
    """Medians over repeats of one variant's measurements (MFU end to end where ``peak``)."""

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    loop_tps = [r["tokens"] / r["loop_s"] for r in runs]
    e2e_tps = [r["tokens"] / (r["loop_s"] + r["precompute_s"]) for r in runs]
    summary = {
        "runs": len(runs),
        "steps": runs[0]["steps"],
        "tokens": runs[0]["tokens"],
        "loop_s": median("loop_s"),
        "precompute_s": median("precompute_s"),
        "tps_loop": statistics.median(loop_tps),
        "tps_e2e": statistics.median(e2e_tps),
        "peak_mb": median("peak_mb"),
        "final_loss": statistics.median(statistics.fmean(r["losses"][-last:]) for r in runs),
        "final_acc": statistics.median(statistics.fmean(r["accuracies"][-last:]) for r in runs),
        "memory_method": runs[0].get("memory_method", ""),
    }
    if peak:
        summary["mfu"] = statistics.median(
            training_flops(stats, r["tokens"], r["tokens_sq"])
            / ((r["loop_s"] + r["precompute_s"]) * peak)
            for r in runs
        )
    if "peak_rss_mb" in runs[0]:
        summary["peak_rss_mb"] = median("peak_rss_mb")
    if "same_tokens_as_alignkit" in runs[0]:
        summary["same_tokens_as_alignkit"] = all(r["same_tokens_as_alignkit"] for r in runs)
    return summary


def report_tables(
    summaries: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    skipped: dict[str, str],
    profile: dict[str, Any],
):
    """The results table, the ratio table (alignkit / each TRL variant) and notes, as text."""
    cpu = args.device == "cpu"
    title = (
        f"DPO, {args.model} on {args.data} pairs, {args.device} {args.dtype}: {args.steps} steps x "
        f"{args.batch_size} pairs, lr {args.learning_rate:g}, beta {args.beta:g}, "
        f"median of {args.repeats}"
    )
    headers = [
        "variant",
        "tok/s (headline)",
        "tok/s loop only",
        "loop s",
        "precompute s",
        "peak RSS growth MB" if cpu else "peak GPU MB",
        f"final loss (last {args.last})",
        f"final acc (last {args.last})",
        "MFU (headline)",
    ]
    rows = [
        [
            name,
            f"{s['tps_e2e']:,.0f}",
            f"{s['tps_loop']:,.0f}",
            f"{s['loop_s']:.2f}",
            f"{s['precompute_s']:.2f}",
            f"{s['peak_mb']:,.1f}",
            f"{s['final_loss']:.4f}",
            f"{s['final_acc']:.3f}",
            f"{s['mfu']:.1%}" if "mfu" in s else "n/a",
        ]
        for name, s in summaries.items()
    ]
    ours = summaries.get("alignkit")
    ratio_headers = ["alignkit / ...", "tok/s (headline)", "tok/s loop only", "peak memory"]
    ratio_rows = [
        [
            name,
            f"{ours['tps_e2e'] / s['tps_e2e']:.2f}x",
            f"{ours['tps_loop'] / s['tps_loop']:.2f}x",
            f"{ours['peak_mb'] / s['peak_mb']:.2f}x",
        ]
        for name, s in summaries.items()
        if ours is not None and name != "alignkit"
    ]
    first = next(iter(summaries.values()))
    notes = [
        "headline tok/s = tokens / (training loop + reference precomputation) wall time",
        "MFU = (8 N tokens + 16 layers hidden sum(L^2)) / (headline wall time x peak FLOP/s)"
        + ("" if "mfu" in first else ": n/a without --peak-tflops"),
        f"tokens per run: {first['tokens']:,} (prompt + completion of every sequence; "
        "alignkit-shared computes each prompt once, its tok/s and MFU count the same tokens)",
        f"data ({args.pairs} pairs, tokens): prompt {profile['prompt']}; response "
        f"{profile['response']}; truncated: {profile['truncated']}",
        f"memory: {first['memory_method']}"
        + (", growth from just before the trainer is built" if cpu else ""),
    ]
    notes += [f"{name}: not run: {why}" for name, why in skipped.items()]
    notes += [
        f"{name}: same token ids as alignkit: {s['same_tokens_as_alignkit']}"
        for name, s in summaries.items()
        if "same_tokens_as_alignkit" in s
    ]
    return title, (headers, rows), (ratio_headers, ratio_rows), notes


def print_report(
    summaries: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    skipped: dict[str, str],
    profile: dict[str, Any],
) -> None:
    """Print the tables with rich (and as Markdown with ``--markdown``)."""
    from rich.console import Console
    from rich.table import Table

    title, main_table, ratio_table, notes = report_tables(summaries, args, skipped, profile)
    console = Console(width=None if sys.stdout.isatty() else 140)
    for caption, (headers, rows) in ((title, main_table), ("", ratio_table)):
        if not rows:
            continue
        table = Table(title=caption or None)
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print("\n".join(notes))
    if args.markdown:
        print(f"\n{title}\n")
        for headers, rows in (main_table, ratio_table):
            if rows:
                print("| " + " | ".join(headers) + " |")
                print("|" + " --- |" * len(headers))
                print("\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n")


# -------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.max_length_or_default = args.max_length or (2048 if args.data == "realistic" else 512)
    if args.variant:  # a child: one variant in this fresh process
        from dpo_bench_variants import run_variant

        run_variant(args.variant, json.loads(args.options.read_text()), str(args.result))
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    skipped = {v: why for v in variants if (why := unavailable(v, args))}
    variants = [v for v in variants if v not in skipped]
    workdir = Path(tempfile.mkdtemp(prefix="dpo-vs-trl-"))
    try:
        opts = prepare(args, workdir)
        stats = model_stats(opts["model_dir"])
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        started = time.time()
        for repeat in range(args.repeats):
            for variant in variants:  # interleaved: drift in machine speed hits all alike
                if variant in skipped:
                    continue
                result = run_child(variant, opts, workdir, repeat)
                if "failed" in result:
                    skipped[variant] = result["failed"]
                    runs.pop(variant)
                    continue
                runs[variant].append(result)
                print(
                    f"  {variant} run {repeat + 1}/{args.repeats}: "
                    f"{result['tokens'] / result['loop_s']:,.0f} tok/s in the loop, "
                    f"precompute {result['precompute_s']:.2f} s, peak {result['peak_mb']:,.1f} MB",
                    file=sys.stderr,
                )
        if not runs:
            raise SystemExit("every variant failed: " + "; ".join(skipped.values()))
        peak = peak_flops(args)
        summaries = {v: summarise(r, args.last, stats, peak) for v, r in runs.items()}
        print_report(summaries, args, skipped, opts["profile"])
        print(f"total wall time {time.time() - started:.0f} s", file=sys.stderr)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "args": vars(args) | {"json": str(args.json)},
                        "runs": runs,
                        "summary": summaries,
                    },
                    indent=1,
                    default=str,
                )
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
