"""Shared fixtures: tiny datasets and models built in well under a second."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irl_lens.data.generate import generate_gridworld
from irl_lens.models.base import BaseModelConfig, build_model

torch.set_num_threads(1)


def tiny_model_config(**overrides) -> BaseModelConfig:
    base = dict(d_model=32, n_layers=2, n_heads=2, d_mlp=64, d_cell=16)
    return BaseModelConfig(**(base | overrides))


@pytest.fixture(scope="session")
def tiny_dataset():
    return generate_gridworld(300, "pretrain", seed=0, progress=False)


@pytest.fixture()
def tiny_model():
    return build_model(tiny_model_config(), seed=0).eval()


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
