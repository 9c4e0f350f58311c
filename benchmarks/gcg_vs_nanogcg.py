"""alignkit's GCG against nanoGCG, side by side on the same optimisation problem.

Both optimise the same string (``--init``) at the same place in the same prompt, for the same
target, on the same model, with the same ``search_width``, ``topk``, ``n_replace``, number of
steps and seeds (``early_stop``, buffer and mellowmax off). The prompt is the user message
``goal{optim_str}`` (nanoGCG's default placement), rendered with the model's chat template; the
script checks that both tokenize it to exactly the same ids before it starts. Both search the
same tokens: nanoGCG's filter lets special tokens other than BOS / EOS / PAD / UNK through
(on the testbed the chat-role markers ``<|user|>`` and ``<|assistant|>``, which the gradient
ranks near the top at most positions), and alignkit never proposes a special token (a user
cannot type one), so the runner adds the special tokens to nanoGCG's exclusions;
``--nanogcg-special-tokens`` leaves nanoGCG as it is. The same seed gives both the same random
stream, so their first steps usually coincide, until floating-point ties send them apart.

nanoGCG pins an old transformers (<= 4.47.1), so it runs in its own virtual environment,
``build/nanogcg-venv`` (created on first use with ``pip install torch==<this torch> nanogcg``),
through a small runner script this benchmark writes there; the two exchange JSON lines over
the runner's stdin / stdout, so the model is loaded once per process. Runs are interleaved:
seed 0 alignkit, seed 0 nanoGCG, seed 1 alignkit, ... after one short warm-up run each.

Speed is steps per second of a whole ``run`` call (setup, the steps and, for alignkit, the
final greedy check; model loading excluded); loss is the best loss seen within the steps (the
current loss can rise with ``buffer_size=0``) and the loss of the last step. Medians over seeds
are reported; the target is >= 1.5x nanoGCG's steps/s with an equal or lower median loss.
CPU runs use ``--threads`` threads in both processes (default 1: two threads on two shared
cores collapse when anything else runs). Run by hand, not part of the tests::

    python benchmarks/gcg_vs_nanogcg.py                     # testbed model, 50 steps, 3 seeds
    python benchmarks/gcg_vs_nanogcg.py --model PATH --steps 100 --seeds 0 1 2 3 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENV = ROOT / "build" / "nanogcg-venv"

# The runner executes inside the nanoGCG environment (old transformers): it loads the model and
# tokenizer once, then answers one JSON request per stdin line with one JSON line on stdout.
RUNNER = r'''
import importlib.metadata, json, sys, time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
import nanogcg
from nanogcg import GCGConfig


def load_tokenizer(path):
    """AutoTokenizer, or (for tokenizers saved by a newer transformers) the raw tokenizer.json
    with the special tokens and chat template read from the same directory."""
    try:
        return AutoTokenizer.from_pretrained(path), ""
    except (ValueError, OSError) as exc:
        config = json.loads((Path(path) / "tokenizer_config.json").read_text())
        special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                   if isinstance(config.get(k), str)}
        tok = PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"), **special)
        template = Path(path) / "chat_template.jinja"
        if template.exists():
            tok.chat_template = template.read_text()
        return tok, f"AutoTokenizer failed ({exc}); loaded tokenizer.json directly"


def exclude_all_special_tokens():
    """Give nanoGCG alignkit's token rules: besides its own exclusions (non-ASCII tokens, BOS,
    EOS, PAD, UNK) no special token at all, e.g. no chat-role markers a user cannot type."""
    own = nanogcg.gcg.get_nonascii_toks

    def patched(tokenizer, device="cpu"):
        special = set(tokenizer.all_special_ids)
        special |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        ids = set(own(tokenizer, device=device).tolist()) | special
        return torch.tensor(sorted(ids), device=device)

    nanogcg.gcg.get_nonascii_toks = patched


def main():
    setup = json.loads(sys.stdin.readline())
    if setup.get("same_tokens"):
        exclude_all_special_tokens()
    if setup.get("threads"):
        torch.set_num_threads(setup["threads"])
    model = AutoModelForCausalLM.from_pretrained(setup["model"], torch_dtype=torch.float32)
    model = model.to(setup["device"]).eval()
    tokenizer, note = load_tokenizer(setup["model"])
    print(json.dumps({"ready": True, "transformers": transformers.__version__,
                      "torch": torch.__version__, "nanogcg": importlib.metadata.version("nanogcg"),
                      "note": note}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        if job.get("ids_only"):  # the ids nanoGCG optimises over, tokenized as nanoGCG does
            text = tokenizer.apply_chat_template(job["messages"], tokenize=False,
                                                 add_generation_prompt=True)
            if tokenizer.bos_token and text.startswith(tokenizer.bos_token):
                text = text.replace(tokenizer.bos_token, "")
            before, after = text.split("{optim_str}")
            ids = tokenizer([before])["input_ids"][0]
            for part in (job["config"]["optim_str_init"], after, job["target"]):
                ids += tokenizer([part], add_special_tokens=False)["input_ids"][0]
            print(json.dumps({"ids": ids}), flush=True)
            continue
        start = time.perf_counter()
        result = nanogcg.run(model, tokenizer, job["messages"], job["target"],
                             GCGConfig(**job["config"]))
        wall = time.perf_counter() - start
        print(json.dumps({"wall": wall, "losses": result.losses, "strings": result.strings,
                          "best_loss": result.best_loss}), flush=True)


main()
'''


def ensure_venv(venv: Path) -> Path:
    """The nanoGCG environment's python, creating the environment (or finishing its install)
    when nanoGCG cannot be imported there."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import nanogcg"]).returncode == 0:
        return python
    import torch

    torch_version = torch.__version__.split("+")[0]
    print(f"setting up {venv} (torch=={torch_version}, nanogcg) ...", file=sys.stderr)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"torch=={torch_version}", "nanogcg"], check=True)
    return python


class NanoGCGRunner:
    """The runner process in the nanoGCG environment."""

    def __init__(
        self, python: Path, model: str, device: str, threads: int | None, same_tokens: bool
    ) -> None:
        script = python.parent.parent / "alignkit_nanogcg_runner.py"
        script.write_text(RUNNER)
        self.proc = subprocess.Popen(
            [str(python), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        setup = {"model": model, "device": device, "threads": threads, "same_tokens": same_tokens}
        self.info = self._ask(setup)

    def _ask(self, message: dict) -> dict:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the nanoGCG runner exited (code {self.proc.wait()})")
        return json.loads(line)

    def run(self, messages: list[dict], target: str, config: dict, ids_only: bool = False) -> dict:
        job = {"messages": messages, "target": target, "config": config, "ids_only": ids_only}
        return self._ask(job)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def gcg_options(args: argparse.Namespace, seed: int, steps: int) -> dict[str, Any]:
    """The settings both implementations get (nanoGCG's names)."""
    return {
        "num_steps": steps,
        "optim_str_init": args.init,
        "search_width": args.search_width,
        "topk": args.topk,
        "n_replace": args.n_replace,
        "seed": seed,
        "verbosity": "WARNING",
    }


def run_alignkit(backend, messages, target: str, options: dict[str, Any]) -> dict:
    from alignkit.redteam.gcg import GCGConfig, GradientBasedRedTeaming

    start = time.perf_counter()
    result = GradientBasedRedTeaming(backend, GCGConfig(**options, progress=False)).run(
        messages, target
    )
    wall = time.perf_counter() - start
    return {"wall": wall, "losses": result.losses, "best_loss": result.best_loss}


def problem_ids(backend, messages, target: str, init: str) -> list[int]:
    """The token ids alignkit optimises over: prompt prefix, initial string, rest, target."""
    from alignkit.redteam.gcg import GCGConfig, GradientBasedRedTeaming

    attack = GradientBasedRedTeaming(backend, GCGConfig(optim_str_init=init, progress=False))
    (problem,), lead = attack.build_problems([(messages, target)])
    optim = attack.tokenizer(lead + init, add_special_tokens=False)["input_ids"]
    parts = (problem.before_ids[0].tolist(), optim, problem.after_ids[0].tolist())
    return [*parts[0], *parts[1], *parts[2], *problem.target_ids[0].tolist()]


def summarise(rows: list[dict], steps: int) -> dict[str, float]:
    return {
        "steps_per_s": statistics.median(steps / r["wall"] for r in rows),
        "best_loss": statistics.median(min(r["losses"][:steps]) for r in rows),
        "last_loss": statistics.median(r["losses"][steps - 1] for r in rows),
    }


def default_problem() -> tuple[str, str]:
    """The first held-out harmful request of the testbed world and its compliance opener."""
    from alignkit.testbed import World

    request = World(0).requests("harmful", "heldout")[0]
    return request.text, f"Sure, here is how to {request.item.replace('my ', 'your ')}."


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a saved transformers model directory (default: testbed)")
    p.add_argument("--goal", help="the user request (default: a held-out testbed request)")
    p.add_argument("--target", help="the target reply opening (default: the testbed opener)")
    p.add_argument("--init", default="x x x x x x x x x x x x x x x x x x x x")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--search-width", type=int, default=512)
    p.add_argument("--topk", type=int, default=256)
    p.add_argument("--n-replace", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (0: default)")
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument(
        "--nanogcg-special-tokens",
        action="store_true",
        help="let nanoGCG use special tokens such as chat-role markers, as it does by default "
        "(alignkit never does); by default both search the same tokens",
    )
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    from alignkit.models import load_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model is None:
        from alignkit.testbed import ensure_testbed

        args.model = str(ensure_testbed(progress=False))
    goal, target = default_problem()
    goal, target = args.goal or goal, args.target or target
    messages = [{"role": "user", "content": goal + "{optim_str}"}]
    backend = load_backend(f"hf:{args.model}", device=args.device, dtype="float32")
    runner = NanoGCGRunner(
        ensure_venv(args.venv), args.model, args.device, args.threads or None,
        same_tokens=not args.nanogcg_special_tokens,
    )  # fmt: skip
    print(f"nanoGCG env: {runner.info}", file=sys.stderr)
    try:
        same = (
            problem_ids(backend, messages, target, args.init)
            == runner.run(messages, target, gcg_options(args, 0, 1), ids_only=True)["ids"]
        )
        if not same:
            raise SystemExit("alignkit and nanoGCG tokenize the problem differently; aborting")
        runner.run(messages, target, gcg_options(args, 0, 2))  # warm-up, not counted
        run_alignkit(backend, messages, target, gcg_options(args, 0, 2))
        ours, theirs = [], []
        for seed in args.seeds:
            options = gcg_options(args, seed, args.steps)
            ours.append(run_alignkit(backend, messages, target, options))
            theirs.append(runner.run(messages, target, options))
            print(
                f"seed {seed}: alignkit {args.steps / ours[-1]['wall']:.2f} steps/s best "
                f"{min(ours[-1]['losses']):.4f} | nanoGCG {args.steps / theirs[-1]['wall']:.2f} "
                f"steps/s best {min(theirs[-1]['losses']):.4f}",
                file=sys.stderr,
            )
    finally:
        runner.close()
    report(args, goal, target, runner.info, ours, theirs)


def report(args, goal, target, info, ours, theirs) -> None:
    """Print the side-by-side table and verdict; write JSON when asked."""
    a, n = summarise(ours, args.steps), summarise(theirs, args.steps)
    ratio = a["steps_per_s"] / n["steps_per_s"]
    results = {
        "model": args.model,
        "goal": goal,
        "target": target,
        "settings": {k: v for k, v in vars(args).items() if k not in {"json", "venv"}},
        "same_token_ids": True,
        "nanogcg_env": info,
        "alignkit": a,
        "nanogcg": n,
        "speedup": ratio,
        "runs": {
            "alignkit": ours,
            "nanogcg": [{k: r[k] for k in ("wall", "losses")} for r in theirs],
        },
    }
    print(
        f"\nGCG, {args.steps} steps, search_width {args.search_width}, topk {args.topk}, "
        f"seeds {args.seeds}, device {args.device}, threads {args.threads or 'default'}; "
        + ("nanoGCG may use special tokens" if args.nanogcg_special_tokens else "same tokens")
    )
    print(f"{'':10} {'steps/s':>9} {'best loss':>10} {'last loss':>10}   (medians over seeds)")
    for name, s in (("alignkit", a), ("nanoGCG", n)):
        print(f"{name:10} {s['steps_per_s']:9.2f} {s['best_loss']:10.4f} {s['last_loss']:10.4f}")
    verdict = "met" if ratio >= 1.5 and a["best_loss"] <= n["best_loss"] else "NOT met"
    print(f"speed-up {ratio:.2f}x; target (>= 1.5x, best loss <= nanoGCG's) {verdict}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
