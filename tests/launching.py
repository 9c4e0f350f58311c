"""Starting the alignkit CLI in several CPU processes (gloo) for the tests: the command lines
(``torch.distributed.run``, what ``accelerate launch`` runs), the environment ``accelerate launch
--config_file examples/accelerate/fsdp.yaml`` gives each process, built by accelerate's own
launch code, and the record ``tests/fsdp_on_cpu.py`` keeps of the models it sharded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from servers import free_port

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
FSDP_CONFIG = EXAMPLES / "fsdp.yaml"
LAUNCHER = Path(__file__).with_name("fsdp_on_cpu.py")


def launch_args(config: Path, processes: int = 2):
    """What ``accelerate launch --config_file CONFIG --num_processes N -m alignkit`` validates."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    argv = ["--config_file", str(config), "--num_processes", str(processes), "-m", "alignkit"]
    args, defaults, _ = _validate_launch_command(parser.parse_args(argv))
    return args, defaults


def fsdp_env(**extra: str) -> dict[str, str]:
    """The environment ``accelerate launch`` gives each process for the FSDP example."""
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _ = launch_args(FSDP_CONFIG)
    args.main_process_port = free_port()
    return {**prepare_multi_gpu_env(args), **extra}


def torchrun(*args: str, processes: int = 2, fsdp: bool = False) -> list[str]:
    """The command that starts ``alignkit ARGS`` in ``processes`` processes: the CLI module, or
    with ``fsdp`` the launcher that lets accelerate shard on CPU (``tests/fsdp_on_cpu.py``)."""
    target = [str(LAUNCHER)] if fsdp else ["-m", "alignkit"]
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_port", str(free_port()), *target, *args,
    ]  # fmt: skip


def fsdp_records(out: Path) -> list[list[dict]]:
    """Per process: the models accelerate sharded there (see tests/fsdp_on_cpu.py)."""
    files = sorted((out / "fsdp-record").glob("rank*.jsonl"))
    return [[json.loads(line) for line in f.read_text().splitlines()] for f in files]
