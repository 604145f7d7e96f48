"""The base model shipped in the package: the quick ant base (issue 32).

Pretraining the quick ant base (2,400 steps on 8,000 episodes) took 28 min of this 2-core
CPU, after 5 min generating its data; the package carries one, as it carries
the ant expert, so a reproduction starts from the same base:
``irl_lens/assets/ant_base/`` is a base-model run folder cut to what loading and reading it
need (``config.json``, ``model.safetensors``, ``summary.json``) plus ``card.json``, which says
what it was trained on, with which command, for how long, and what it scores.

* :func:`ship_base` copies a finished, evaluated run there (``irl-lens evaluate RUN --ship``);
* :func:`unpack_base` copies it into a new run folder (``irl-lens unpack-base --out DIR``, the
  base stage of ``irl-lens reproduce ant`` unless ``--from-scratch``);
* :func:`shipped_card` reads the card (``None`` when nothing is shipped).

``load_base_model(SHIPPED_ANT_BASE)`` loads it like any run folder.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from irl_lens import runs

SHIPPED_ANT_BASE = Path(__file__).resolve().parents[1] / "assets" / "ant_base"
"""The quick ant base shipped in the package (see the module docstring)."""

FILES = ("config.json", "model.safetensors", "summary.json")
"""What a shipped base keeps of its run folder (no checkpoints, no metrics)."""
CARD = "card.json"


def shipped_card(folder: Path | None = None) -> dict | None:
    """The shipped base's card (``folder``: :data:`SHIPPED_ANT_BASE`), or ``None`` when the
    package ships none."""
    folder = SHIPPED_ANT_BASE if folder is None else Path(folder)
    if not all((folder / name).is_file() for name in (*FILES, CARD)):
        return None
    return runs.read_json(folder / CARD, "shipped base card")


def pretrain_command(config: dict) -> str:
    """The ``irl-lens pretrain`` command line of a run like ``config``'s: its preset, arch,
    path features, steps and seed (the card's ``model`` and ``train`` hold every setting)."""
    model, train = config["model"], config["train"]
    return " ".join([
        "irl-lens --threads 1 pretrain DATA --out RUN --preset", str(config.get("preset")),
        "--arch", str(model.get("arch", "transformer")),
        "--path-features" if model.get("path_features") else "--no-path-features",
        *(["--heading-features"] if model.get("heading_features") else []),
        *(["--underfoot-features"] if model.get("underfoot_features") else []),
        *(["--future-horizon", str(model["future_horizon"])]
          if model.get("future_horizon") else []),
        *(["--action-mixtures", str(model["action_mixtures"])]
          if model.get("action_mixtures", 1) > 1 else []),
        *(["--next-colour-weight", f"{model['next_colour_weight']:g}"]
          if model.get("next_colour_weight") else []),
        "--steps", str(train["steps"]), "--seed", str(train["seed"]),
    ])  # fmt: skip


def ship_base(run: Path, ship_command: str, folder: Path | None = None) -> dict:
    """Copy the finished, evaluated base model ``run`` into ``folder`` (default
    :data:`SHIPPED_ANT_BASE`) with its card; return the card. A base shipped there before is
    replaced once the new one is complete."""
    run, folder = Path(run), SHIPPED_ANT_BASE if folder is None else Path(folder)
    config = runs.read_json(run / "config.json", "run config")
    if config.get("kind") != "base_model":
        raise runs.RunError(f"--ship: {run} is a {config.get('kind')!r} run, not a base_model")
    for name in FILES:
        if not (run / name).is_file():
            raise runs.RunError(
                f"--ship: {run} has no {name} (finish pretraining, then evaluate it)"
            )
    summary = runs.read_json(run / "summary.json", "summary")
    meta = config.get("data_meta") or {}
    card = {
        "from": str(run.resolve()),
        "shipped": time.strftime("%Y-%m-%d"),
        "ship_command": ship_command,
        "env": meta.get("env"),
        "preset": config.get("preset"),
        "data": {
            "meta": meta,
            "sha256": config.get("data_sha256"),
            "command": f"irl-lens data {meta.get('env')} --split {meta.get('split')} "
            f"--episodes {meta.get('n_episodes')} --out DATA --seed {meta.get('seed')}",
        },
        "pretrain_command": pretrain_command(config),
        "model": config["model"],
        "train": config["train"],
        "summary": {k: v for k, v in summary.items() if isinstance(v, int | float)},
        "weights_sha256": runs.file_sha256(run / "model.safetensors"),
    }
    runs.check_output(folder, "base_model", overwrite=True, option="ship")
    with runs.staged(folder, overwrite=True) as tmp:
        for name in FILES:
            shutil.copyfile(run / name, tmp / name)
        runs.write_json(tmp / CARD, card)
    folder.chmod(0o755)  # a package folder, readable by all (the staging folder was private)
    return card


def unpack_base(out: Path, folder: Path | None = None) -> dict:
    """Copy the shipped base (``folder``: :data:`SHIPPED_ANT_BASE`) into the new run folder
    ``out``; return its card.

    ``out/config.json`` names the card (``shipped``) and no dataset of its own: the data it
    was trained on are described in the card, and ``evaluate`` then needs ``--data``."""
    folder = SHIPPED_ANT_BASE if folder is None else Path(folder)
    card = shipped_card(folder)
    if card is None:
        raise runs.RunError(
            f"the package ships no base model ({folder}); train one with "
            "`irl-lens pretrain DATA --out RUN`"
        )
    out = runs.check_output(out, "base_model", inputs=[folder])
    weights = folder / "model.safetensors"
    if runs.file_sha256(weights) != card["weights_sha256"]:
        raise runs.RunError(f"{weights} does not match its card's SHA-256; reinstall irl-lens")
    config = runs.read_json(folder / "config.json", "shipped base config")
    with runs.staged(out) as tmp:
        for name in FILES:
            shutil.copyfile(folder / name, tmp / name)
        runs.write_json(tmp / CARD, card)
        runs.write_json(tmp / "config.json", config | {"data": None, "shipped": CARD})
    return card
