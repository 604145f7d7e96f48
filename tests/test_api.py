"""The public API: ``import irl_lens`` is light, and a metacontroller trains on and attaches
to a TransformerLens model that is not ours (a tiny model of a toy sequence task)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import HookedTransformer, HookedTransformerConfig

import irl_lens
from irl_lens.hooks import hook_count
from irl_lens.train.discover import DiscoverConfig

VOCAB, POS = 8, 24


def test_import_loads_neither_torch_nor_mujoco():
    code = (
        "import irl_lens, sys; irl_lens.load_base_model; irl_lens.fit_metacontroller; "
        "assert 'torch' not in sys.modules and 'mujoco' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves_and_has_a_docstring_with_an_example():
    for name in irl_lens._API:
        obj = getattr(irl_lens, name)
        assert obj.__doc__, name
    for name in irl_lens._FUNCTIONS:
        assert "Example" in getattr(irl_lens, name).__doc__, name
    with pytest.raises(AttributeError):
        irl_lens.no_such_thing  # noqa: B018


def _toy_sequences(n: int, generator: torch.Generator) -> torch.Tensor:
    """Sequences of two segments, each a repeated pair of tokens ("subgoal" k cycles
    2k, 2k+1, 2k, ...), switching at a random position: a task with temporal structure."""
    first = torch.randint(0, VOCAB // 2, (n,), generator=generator)
    second = (first + torch.randint(1, VOCAB // 2, (n,), generator=generator)) % (VOCAB // 2)
    switch = torch.randint(6, POS - 6, (n,), generator=generator)
    pos = torch.arange(POS)
    goal = torch.where(pos[None, :] < switch[:, None], first[:, None], second[:, None])
    return 2 * goal + (pos[None, :] % 2)  # [n, pos]


def _tiny_user_model(tokens: torch.Tensor) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=POS, d_vocab=VOCAB,
        act_fn="relu", normalization_type="LN", positional_embedding_type="rotary",
    )  # fmt: skip
    torch.manual_seed(0)
    model = HookedTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(tokens[:64])
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:64, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_discovery_on_a_user_model_then_attach(tmp_path):
    g = torch.Generator().manual_seed(0)
    tokens = _toy_sequences(256, g)
    model = _tiny_user_model(tokens)
    with torch.no_grad():
        base_nll = F.cross_entropy(
            model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
        ).item()
    assert base_nll < 1.0  # the model learnt the toy task

    cfg = DiscoverConfig(steps=60, lr=3e-3, alpha=0.05, tokens_per_batch=32 * POS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mc = irl_lens.fit_metacontroller(model, tokens, layer=1, cfg=cfg)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the user's model is untouched
    assert hook_count(model) == 0

    folder = irl_lens.save_metacontroller(mc, tmp_path / "my-mc", layer=1)
    loaded = irl_lens.load_metacontroller(folder, base=model)
    assert loaded.base is model and loaded.layer == 1
    for (k, a), b in zip(mc.state_dict().items(), loaded.mc.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with torch.no_grad():
        logits, mo = irl_lens.run_with_metacontroller(
            model, loaded.mc, loaded.layer, tokens[:16], sample=False
        )
    assert logits.shape == (16, POS, VOCAB) and mo.beta.shape == (16, POS)
    assert hook_count(model) == 0
    controlled = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:16, 1:].flatten()).item()
    assert controlled < base_nll + 0.5  # the decoder learnt to keep the model's predictions
    # the hook name the metacontroller wrote into, for the user's own tooling
    assert irl_lens.resid_hook_name(1, 2) == "blocks.1.hook_resid_pre"
