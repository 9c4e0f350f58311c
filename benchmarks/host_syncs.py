"""Where a DPO training step waits for the GPU: every synchronising operation of a few steps,
counted by the line of alignkit (or the library) that made it.

``torch.cuda.set_sync_debug_mode("warn")`` makes torch warn at each CUDA operation that blocks
the host until the device has finished its queued work (reading a value, a blocking copy to
or from the device). The first step (the fused-head check, the allocator warming up) is left
out. Run on a GPU (part of ``benchmarks/gpu_check.sh``)::

    python benchmarks/host_syncs.py --model random:qwen2-0.5b --dtype bf16 --steps 4

On CPU nothing synchronises: the script says so and counts nothing. On CPU,
``tests/test_dpo_host_reads.py`` counts the reads alignkit's own code and transformers'
mask builder make.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_vs_trl import build_random_model, realistic_pairs  # noqa: E402

from alignkit.dpo import DPOConfig, DPOTrainer  # noqa: E402
from alignkit.testbed import ensure_testbed  # noqa: E402
from alignkit.testbed.preferences import write_jsonl  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:qwen2-0.5b", help="testbed or random:SHAPE")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4, help="counted steps (after the first)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="host-syncs-"))
    write_jsonl(realistic_pairs(args.batch_size * (args.steps + 1), seed=0), work / "pairs.jsonl")
    model = (
        str(ensure_testbed())
        if args.model == "testbed"
        else str(build_random_model(args.model.split(":", 1)[1], work / "model", seed=0))
    )
    config = DPOConfig(data=work / "pairs.jsonl", output_dir=work / "out", max_steps=args.steps + 1,
                       batch_size=args.batch_size, precision=args.dtype, max_length=2048,
                       max_prompt_length=1024, kl_samples=0, device=args.device)  # fmt: skip
    trainer = DPOTrainer(f"hf:{model}", config)
    trainer.output_dir.mkdir(parents=True, exist_ok=True)
    trainer.prepare_reference()
    trainer.train_step([trainer._micro_batch(0)])  # warm: the head check, the allocator
    if trainer.accelerator.device.type != "cuda":
        print(f"device {trainer.accelerator.device}: no CUDA, nothing synchronises; counted 0")
        return
    torch.cuda.synchronize()
    syncs: Counter = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):  # the place, and the alignkit line that led there
            ours = [f for f in traceback.extract_stack() if "/alignkit/" in f.filename]
            via = f" (via {Path(ours[-1].filename).name}:{ours[-1].lineno})" if ours else ""
            syncs[f"{Path(filename).name}:{lineno}{via}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for step in range(1, args.steps + 1):
                trainer.train_step([trainer._micro_batch(step)])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    total = sum(syncs.values())
    print(f"{total} synchronising operations in {args.steps} steps "
          f"({total / args.steps:.1f} a step), by line:")  # fmt: skip
    for where, count in syncs.most_common():
        print(f"  {count / args.steps:5.1f} a step  {where}")


if __name__ == "__main__":
    main()
