"""Pieces every ``irl-lens`` command module shares: device choice, seed option, tables.

Kept apart from :mod:`irl_lens.cli.app` so that command modules registered on the app (for
example :mod:`irl_lens.cli.analysis`) can import them without importing the app itself.
"""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


class Device(StrEnum):
    """Where a command runs its models: ``auto`` picks CUDA when there is one."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


MAX_COUNT = 1_000_000_000
"""Upper bound of every count option (episodes, steps, updates, seeds): the paper's largest
stage, ant expert PPO, takes ~2.6e8 env steps; a typo like 1e23 must not run until killed."""

DEVICE_OPTION = typer.Option(help="auto, cpu or cuda.")
PRECISION_OPTION = typer.Option(
    help="Forward pass precision: fp32, or bf16 autocast (float32 master weights; for GPUs "
    "with bfloat16; rollouts and evaluations stay float32)."
)


class Precision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"


SEED_OPTION = typer.Option(help="Seed; same seed, same numbers on a CPU.")
RUNNER_OPTION = typer.Option(help="local (processes here) or ray (tasks on a Ray cluster).")
RAY_ADDRESS_OPTION = typer.Option(help="The Ray cluster (default: $RAY_ADDRESS, else a local Ray).")
SWEEP_WORKERS_OPTION = typer.Option(
    help="Parallel worker processes (default: one per CPU core).", min=0
)
SWEEP_DEVICE_OPTION = typer.Option(help="auto, cpu or cuda, for every run.")


def resolve_device(device: Device | str) -> str:
    """``auto`` picks CUDA when available; asking for CUDA without one is a usage error."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    import torch

    name = Device(device).value
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    return name


def print_table(
    rows: dict[str, float | int | str | None],
    title: str | None = None,
    why: dict[str, str] | None = None,
) -> None:
    """Print ``key  value`` lines, floats with 4 decimals (thousands separators when large).

    A value that could not be computed (``None`` or NaN; ``null`` in summary.json) prints as
    ``n/a`` with the reason from ``why`` (key -> reason) or a generic one.
    """
    if title:
        print(title)
    width = max((len(k) for k in rows), default=0)
    for k, v in rows.items():
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            v = f"n/a ({(why or {}).get(k, 'not computed: too little data')}; null in JSON)"
        elif isinstance(v, float):
            v = f"{v:.4f}" if abs(v) < 1e4 else f"{v:,.0f}"
        print(f"  {k:<{width}}  {v}")


def run_env(run: Path) -> str:
    """The environment a base-model run was trained on (``gridworld`` or ``ant``)."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens import runs

    config = runs.read_json(Path(run) / "config.json", "run config")
    return (config.get("data_meta") or {}).get("env") or "gridworld"


def clean_dataset(data: Path | None, episodes: int, seed: int, env: str = "gridworld"):
    """``--data`` if given, else ``episodes`` fresh clean expert episodes of ``env`` (seeded)."""
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.data.dataset import load_dataset

    if data is not None:
        return load_dataset(data), str(data)
    logger.info("no --data: generating %d clean %s expert episodes (seed %d)", episodes, env, seed)
    if env == "ant":
        # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
        from irl_lens.data.generate_ant import generate_ant

        return generate_ant(episodes, split="clean", seed=seed), None
    # lazy: heavy imports (torch, MuJoCo) load only for the command that runs
    from irl_lens.data.generate import generate_gridworld

    return generate_gridworld(episodes, split="clean", seed=seed), None


def parse_rank(rank: str | None, env_name: str, d_model: int) -> int | None:
    """``--rank``: 1..d_model, ``full`` (``None``), or the paper's default for the env."""
    if rank is None:
        return None if env_name == "ant" else 16
    if rank.strip().lower() == "full":
        return None
    try:
        value = int(rank)
    except ValueError:
        value = 0
    if not 1 <= value <= d_model:
        raise ValueError(f"--rank {rank!r}: give a number from 1 to d_model ({d_model}) or full")
    return value
