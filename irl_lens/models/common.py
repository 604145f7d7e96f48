"""Pieces every model module shares: JSON round-trips of configs, seeded construction, seeded
noise on any device."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Self, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


class DictConfig:
    """Mixin for config dataclasses stored in ``config.json``: ``to_dict`` / ``from_dict``."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """Rebuild from a dict, naming any field this version does not know."""
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        return cls(**d)


def build_seeded(factory: Callable[[], T], seed: int) -> T:
    """``factory()`` with torch's global RNG seeded by ``seed``, then restored (untouched)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return factory()
    finally:
        torch.random.set_rng_state(state)


def noise(kind: str, shape: tuple[int, ...], generator: torch.Generator | None,
          device: torch.device | str) -> Tensor:  # fmt: skip
    """``torch.rand`` (``kind="rand"``) or ``torch.randn`` samples of ``shape`` on ``device``.

    With a ``generator`` the samples are drawn on the generator's own device and then moved,
    so a CPU generator gives the same numbers on the CPU and on CUDA (and never meets a
    tensor of another device); without one, torch's global RNG of ``device`` draws them.
    """
    draw = {"rand": torch.rand, "randn": torch.randn}[kind]
    if generator is None:
        return draw(shape, device=device)
    return draw(shape, generator=generator, device=generator.device).to(device)
