"""Layer addressing, linear controllers and interventions through hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irl_lens.data.dataset import make_batch
from irl_lens.hooks import (
    check_layer,
    hook_count,
    intervene,
    layer_hook_name,
    n_layers_of,
    parse_layers,
    resid_hook_name,
)
from irl_lens.models.controller import (
    ControllerBank,
    ControllerConfig,
    apply_full,
    apply_low_rank,
    build_controller_bank,
)


def _random_bank(d_model: int, k: int = 3, rank: int | None = 4, seed: int = 0) -> ControllerBank:
    bank = build_controller_bank(ControllerConfig(d_model, k, rank=rank), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return bank


def _explicit(e: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """``e + U e`` with plain loops over the full matrix (no module, no einsum)."""
    out = e.clone()
    d = e.shape[-1]
    for i in range(d):
        acc = torch.zeros(e.shape[:-1])
        for j in range(d):
            acc = acc + U[i, j] * e[..., j]
        out[..., i] = out[..., i] + acc
    return out


def _assert_positions_explicit(bank, e, index, full, atol: float) -> None:
    """``bank(e, index)`` position by position against :func:`_explicit` with ``full[k]``."""
    out = bank(e, index).detach()
    for b in range(e.shape[0]):
        for p in range(e.shape[1]):
            c = int(index[b, p])
            expected = e[b, p] if c < 0 else _explicit(e[b, p], full[c])
            torch.testing.assert_close(out[b, p], expected, rtol=1e-5, atol=atol)


def test_resid_hook_names():
    assert resid_hook_name(0, 4) == "blocks.0.hook_resid_pre"
    assert resid_hook_name(3, 4) == "blocks.3.hook_resid_pre"
    assert resid_hook_name(4, 4) == "blocks.3.hook_resid_post"
    for bad in (-1, 5, 1.5, True):
        with pytest.raises(ValueError, match="layer"):
            resid_hook_name(bad, 4)
    assert check_layer(2, 2) == 2


def test_layer_names_exist_on_the_model(tiny_model):
    L = n_layers_of(tiny_model)
    assert L == tiny_model.cfg.n_layers
    for layer in range(L + 1):
        assert layer_hook_name(tiny_model, layer) in tiny_model.hook_dict


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert parse_layers(None, 2) == [0, 1, 2]
    assert parse_layers("0,2, 4", 4) == [0, 2, 4]
    assert parse_layers("1-3,1", 4) == [1, 2, 3]
    assert parse_layers([3, 1], 4) == [1, 3]
    for bad in ("5", "a", "0,,x"):
        with pytest.raises(ValueError, match="layer"):
            parse_layers(bad, 4)


@pytest.mark.parametrize("rank", [4, None])
def test_controller_equals_explicit_matmul(rank):
    d, k = 6, 3
    bank = _random_bank(d, k, rank)
    if rank is None:
        full = bank.U.detach()
    else:  # U_k = B_k A_k, entry by entry
        A, B = bank.A.detach(), bank.B.detach()
        full = torch.zeros(k, d, d)
        for c in range(k):
            for i in range(d):
                for j in range(d):
                    full[c, i, j] = sum(B[c, i, r] * A[c, r, j] for r in range(rank))
    torch.testing.assert_close(bank.matrices().detach(), full)
    e = torch.randn(2, 5, d)
    index = torch.tensor([[0, 1, 2, -1, 1], [2, 2, 0, 0, -1]])
    _assert_positions_explicit(bank, e, index, full, atol=1e-6)
    # a per-row index and a single int pick the same controllers
    torch.testing.assert_close(bank(e, torch.tensor([1, 1])), bank(e, 1))


def _random_hyper_bank(d: int, k: int, rank: int | None) -> ControllerBank:
    cfg = ControllerConfig(d, k, rank=rank, hypernetwork=True, n_z=5, d_dec=3)
    bank = build_controller_bank(cfg, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # B (or U) starts at zero: randomise so that U is not trivial
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return bank


@pytest.mark.parametrize("rank", [2, None])
def test_hypernetwork_controller_equals_explicit_matmul(rank):
    # controller k = onehot(k) through [gelu(W z + b), 1], then U linear in that vector
    d, k = 6, 3
    bank = _random_hyper_bank(d, k, rank)
    W, b = bank.dec.weight.detach(), bank.dec.bias.detach()
    full = torch.zeros(k, d, d)
    for c in range(k):
        z = torch.zeros(5)
        z[c] = 1.0
        h = W @ z + b
        g = [float(0.5 * v * (1 + torch.erf(v / 2**0.5))) for v in h] + [1.0]  # exact GELU
        if rank is None:
            full[c] = sum(g[j] * bank.dec_U[j].detach() for j in range(len(g)))
        else:
            A = sum(g[j] * bank.dec_A[j].detach() for j in range(len(g)))
            B = sum(g[j] * bank.dec_B[j].detach() for j in range(len(g)))
            for i in range(d):
                for jj in range(d):
                    full[c, i, jj] = sum(B[i, r] * A[r, jj] for r in range(rank))
    torch.testing.assert_close(bank.matrices().detach(), full, rtol=1e-5, atol=1e-6)
    e = torch.randn(2, 4, d)
    index = torch.tensor([[0, 1, 2, -1], [2, 2, 0, 1]])
    _assert_positions_explicit(bank, e, index, full, atol=1e-5)


def test_hypernetwork_controller_is_the_metacontroller_decoder_on_one_hot_codes():
    from irl_lens.models.metacontroller import MetacontrollerConfig, build_metacontroller

    d, k = 8, 4
    bank = _random_hyper_bank(d, k, 2)
    mc = build_metacontroller(MetacontrollerConfig(d_model=d, n_z=5, d_dec=3, rank=2))
    with torch.no_grad():
        for name in ("dec.weight", "dec.bias", "dec_A", "dec_B"):
            mc.get_parameter(name).copy_(bank.get_parameter(name))
    e = torch.randn(3, 4, d)
    for c in range(k):
        z = torch.zeros(3, 4, 5)
        z[..., c] = 1.0
        torch.testing.assert_close(bank(e, c), mc.apply_code(e, z), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="n_z"):
        ControllerConfig(d, 6, rank=2, hypernetwork=True, n_z=5)
    torch.testing.assert_close(bank(e, -1), e)


def test_functional_forms_equal_explicit():
    d, r = 5, 2
    e = torch.randn(3, 4, d)
    A, B = torch.randn(3, 1, r, d), torch.randn(3, 1, d, r)  # one U per row
    U = torch.randn(d, d)
    low = apply_low_rank(e, A, B)
    for b in range(3):
        torch.testing.assert_close(low[b], _explicit(e[b], B[b, 0] @ A[b, 0]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(apply_full(e, U), _explicit(e, U), rtol=1e-5, atol=1e-5)


def test_fresh_controller_is_identity_and_config_is_validated():
    bank = ControllerBank(ControllerConfig(8, 2, rank=3))
    e = torch.randn(2, 3, 8)
    torch.testing.assert_close(bank(e, 1), e)
    for kwargs in ({"d_model": 0}, {"d_model": 4, "rank": 5}, {"d_model": 4, "n_controllers": 0}):
        with pytest.raises(ValueError, match="ControllerConfig"):
            ControllerConfig(**kwargs)
    with pytest.raises(ValueError, match="index"):
        bank(e, 2)
    with pytest.raises(ValueError, match="shape"):
        bank(e, torch.zeros(3, dtype=torch.long))


def test_hooks_are_visible_to_transformer_lens():
    bank = _random_bank(4, 2, 2)
    e = torch.randn(1, 2, 4)
    _, cache = bank.run_with_cache(e, torch.tensor([0]))
    torch.testing.assert_close(cache["hook_controller_out"], e + cache["hook_delta"])


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_activations_below_the_layer_are_unchanged(tiny_model, tiny_dataset, layer):
    obs = make_batch(tiny_dataset, np.array([0, 1])).obs
    L = tiny_model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    with torch.no_grad():
        base_out, base = tiny_model.run_with_cache(obs, names_filter=names)
        bank = _random_bank(tiny_model.cfg.d_model, 1, 4)
        with intervene(tiny_model, layer, bank.select(0)):
            out, steered = tiny_model.run_with_cache(obs, names_filter=names)
    for i in range(layer):
        torch.testing.assert_close(steered[names[i]], base[names[i]], rtol=0, atol=0)
    # the hook point at `layer` now holds e + U e, and the output changed
    expected = bank(base[names[layer]], 0)
    torch.testing.assert_close(steered[names[layer]], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, base_out)
    assert hook_count(tiny_model) == 0


def test_hooks_removed_after_an_exception(tiny_model, tiny_dataset):
    obs = make_batch(tiny_dataset, np.array([0])).obs
    name = layer_hook_name(tiny_model, 1)
    with torch.no_grad():
        before = tiny_model(obs)
    with pytest.raises(RuntimeError, match="boom"), intervene(tiny_model, 1, lambda e: 2 * e):
        assert len(tiny_model.hook_dict[name]._forward_hooks) == 1
        raise RuntimeError("boom")
    assert len(tiny_model.hook_dict[name]._forward_hooks) == 0
    assert tiny_model.hook_dict[name].fwd_hooks == []

    def failing(e):
        raise KeyError("inside the forward pass")

    with pytest.raises(KeyError), intervene(tiny_model, 1, failing):
        tiny_model(obs)
    with pytest.raises(ValueError, match="shape"), intervene(tiny_model, 1, lambda e: e[:, :1]):
        tiny_model(obs)
    assert hook_count(tiny_model) == 0
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(obs), before)


def test_nested_interventions_remove_only_their_own_hook(tiny_model):
    name = layer_hook_name(tiny_model, 0)
    with intervene(tiny_model, 0, lambda e: e):
        with intervene(tiny_model, 0, lambda e: e):
            assert len(tiny_model.hook_dict[name]._forward_hooks) == 2
        assert len(tiny_model.hook_dict[name]._forward_hooks) == 1
    assert hook_count(tiny_model) == 0
