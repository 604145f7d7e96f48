"""The base action model: TransformerLens conventions, rotary KV-cache stepping, the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import ActivationCache, HookedTransformer
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from irl_lens.data.dataset import make_batch
from irl_lens.models.base import ActionModel, BaseModelConfig, build_model

from .conftest import tiny_model_config


def _obs(ds, episodes=(0, 1, 2)):
    return make_batch(ds, np.array(episodes)).obs


def test_is_a_hooked_transformer_with_rotary(tiny_model):
    assert isinstance(tiny_model, HookedTransformer)
    assert tiny_model.cfg.positional_embedding_type == "rotary"
    assert tiny_model.cfg.normalization_type == "LN"


def test_step_by_step_with_kv_cache_equals_full_forward(tiny_model, tiny_dataset):
    obs = _obs(tiny_dataset)
    full = tiny_model(obs)
    cache = TransformerLensKeyValueCache.init_cache(tiny_model.cfg, "cpu", obs.shape[0])
    steps = [tiny_model(obs[:, t : t + 1], past_kv_cache=cache) for t in range(obs.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_positions_matter(tiny_model, tiny_dataset):
    """Without positions, the last output would not depend on the order of the prefix."""
    obs = _obs(tiny_dataset, (0,))[:, :3]
    swapped = obs[:, [1, 0, 2]]
    assert not torch.allclose(tiny_model(obs)[:, 2], tiny_model(swapped)[:, 2])


def test_split_at_layer_steps_equal_full_forward(tiny_model, tiny_dataset):
    obs = _obs(tiny_dataset)
    full = tiny_model(obs)
    cache = TransformerLensKeyValueCache.init_cache(tiny_model.cfg, "cpu", obs.shape[0])
    outs = []
    for t in range(obs.shape[1]):
        resid = tiny_model(obs[:, t : t + 1], stop_at_layer=1, past_kv_cache=cache)
        outs.append(tiny_model(resid, start_at_layer=1, past_kv_cache=cache))
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-5, atol=1e-5)


def test_run_with_cache_has_the_usual_hook_names(tiny_model, tiny_dataset):
    obs = _obs(tiny_dataset)
    out, cache = tiny_model.run_with_cache(obs)
    assert isinstance(cache, ActivationCache)
    L = tiny_model.cfg.n_layers
    for name in [
        "hook_obs_embed",
        "blocks.0.hook_resid_pre",
        f"blocks.{L - 1}.hook_resid_post",
        "blocks.0.attn.hook_pattern",
        "blocks.1.mlp.hook_post",
    ]:
        assert name in cache, name
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_obs_embed"])
    torch.testing.assert_close(out, tiny_model(obs))
    _, only = tiny_model.run_with_cache(obs, names_filter=lambda n: n.endswith("resid_pre"))
    assert set(only.keys()) == {f"blocks.{i}.hook_resid_pre" for i in range(L)}


def test_hooks_can_edit_the_residual_stream(tiny_model, tiny_dataset):
    obs = _obs(tiny_dataset)
    clean = tiny_model(obs)
    zeroed = tiny_model.run_with_hooks(
        obs, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, hook: torch.zeros_like(x))]
    )
    assert not torch.allclose(clean, zeroed)
    assert not any(hp._forward_hooks for hp in tiny_model.hook_dict.values())


def test_encoder_sees_what_lies_under_the_agent(tiny_model):
    """Two observations differing only in the colour under the agent embed differently,
    while moving an unrelated empty cell's content is not possible (layout fixed)."""
    layout = torch.zeros(49, dtype=torch.long)
    layout[10], layout[20] = 1, 2  # colours 0 and 1
    a = torch.cat([layout, torch.tensor([10])])
    b = torch.cat([layout, torch.tensor([20])])
    e = tiny_model.embed_obs(torch.stack([a, b])[None])
    assert not torch.allclose(e[0, 0], e[0, 1])


def test_same_seed_same_weights():
    a, b = build_model(tiny_model_config(), seed=1), build_model(tiny_model_config(), seed=1)
    c = build_model(tiny_model_config(), seed=2)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters(), strict=True))


def test_build_model_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(tiny_model_config(), seed=7)
    torch.testing.assert_close(torch.rand(3), expected)


@pytest.mark.parametrize(
    "field, value",
    [
        ("d_model", 4),
        ("n_heads", 3),
        ("n_layers", 0),
        ("obs_kind", "pixels"),
        ("obs_loss_weight", -1.0),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        BaseModelConfig(**{**tiny_model_config().to_dict(), field: value})


def test_continuous_actions_gaussian_head():
    cfg = tiny_model_config(obs_kind="vector", obs_dim=6, action_kind="continuous", n_actions=3)
    model = ActionModel(cfg)
    obs = torch.randn(2, 5, 6)
    out = model(obs)
    assert out.shape == (2, 5, 2 * 3 + 6)
    mask = torch.ones(2, 5)
    nll_a, nll_o = model.losses(out, torch.randn(2, 5, 3), torch.randn(2, 5, 6), mask)
    assert nll_a.ndim == 0 and torch.isfinite(nll_a) and torch.isfinite(nll_o)


def test_path_features_are_the_experts_shortest_path_moves(tiny_dataset):
    """path_features == the expert's own DP: for every dataset state and every colour,
    the set of shortest-path moves (as bits) and the path length."""
    from irl_lens.envs.expert import UNREACHABLE, _move_masks, distance_maps
    from irl_lens.envs.gridworld_layout import NEXT_CELL
    from irl_lens.models.base import MAX_PATH_BUCKET, path_features

    obs = make_batch(tiny_dataset, np.arange(40)).obs  # [40, pos, 50]
    codes, agent = obs[..., :49], obs[..., 49]
    moves, steps = path_features(codes, agent)
    assert moves.shape == steps.shape == (*agent.shape, 8)
    layouts = codes.reshape(-1, 49).numpy().astype(np.uint8)
    pos = agent.reshape(-1).numpy()
    dist = distance_maps(layouts)
    for colour in range(8):
        good, _ = _move_masks(dist[:, colour], layouts, pos, np.full(len(pos), colour))
        reach = dist[:, colour][np.arange(len(pos))[:, None], NEXT_CELL[pos]].min(1)
        ok = reach < UNREACHABLE
        want_moves = np.where(ok, (good * np.array([1, 2, 4, 8])).sum(1), 0)
        want_steps = np.where(ok, np.minimum(reach + 1, MAX_PATH_BUCKET), MAX_PATH_BUCKET + 1)
        np.testing.assert_array_equal(moves[..., colour].reshape(-1).numpy(), want_moves)
        np.testing.assert_array_equal(steps[..., colour].reshape(-1).numpy(), want_steps)
    assert (moves > 0).float().mean() > 0.9  # nearly every colour is reachable


def test_path_features_change_the_embedding_and_keep_the_step_equality(tiny_dataset):
    """With path features on, the embedding depends on them (two boards differing only in
    a wall that cuts the path), and stepping with a KV cache still equals the full pass."""
    model = build_model(tiny_model_config(path_features=True), seed=0).eval()
    layout = torch.zeros(49, dtype=torch.long)
    for colour, cell in enumerate([0, 6, 42, 48, 3, 21, 27, 45]):
        layout[cell] = colour + 1
    walled = layout.clone()
    walled[[23, 25, 31, 17]] = 9  # 4 walls around the agent's cell 24, but 2 sides
    a = torch.cat([layout, torch.tensor([24])])
    b = torch.cat([walled, torch.tensor([24])])
    e = model.embed_obs(torch.stack([a, b])[None])
    assert not torch.allclose(e[0, 0], e[0, 1])
    obs = make_batch(tiny_dataset, np.arange(3)).obs
    full = model(obs)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, obs.shape[0])
    steps = [model(obs[:, t : t + 1], past_kv_cache=cache) for t in range(obs.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)


def test_pooled_object_encoder_has_no_colour_slots_and_keeps_the_step_equality(tiny_dataset):
    """The ``objects`` encoder (issue 29, Fig 4): its pooled part is one function of the set
    of objects, so it has no per-colour slot (swapping two colours' object tokens changes
    nothing but what the tokens themselves say), gradients reach the queries, and stepping
    with a KV cache equals the full pass."""
    from irl_lens.models.base import PooledObjectEncoder

    model = build_model(tiny_model_config(path_features=True, encoder="objects"), seed=0).eval()
    enc = model.obs_encoder
    assert isinstance(enc, PooledObjectEncoder) and enc.heads == 4
    assert enc.out.in_features == 4 * model.model_cfg.d_cell  # heads, not colours + 1
    obs = make_batch(tiny_dataset, np.arange(3)).obs
    # the object pooling is invariant to the order of the objects: reverse them
    feats = torch.randn(2, 5, 9, model.model_cfg.d_cell).relu()
    keep = torch.ones(2, 5, 9, 1, dtype=torch.bool)
    keep[:, :, -1] = False
    codes = torch.randint(1, 9, (2, 5, 9))
    order = torch.tensor([7, 6, 5, 4, 3, 2, 1, 0, 8])
    torch.testing.assert_close(
        enc._pool(feats, codes, keep), enc._pool(feats[:, :, order], codes[:, :, order], keep)
    )
    # a masked object (an empty slot) does not count, whatever its features
    junk = feats.clone()
    junk[:, :, -1] = 100.0
    torch.testing.assert_close(enc._pool(feats, codes, keep), enc._pool(junk, codes, keep))
    full = model(obs)
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, obs.shape[0])
    steps = [model(obs[:, t : t + 1], past_kv_cache=cache) for t in range(obs.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    model.train()
    model(obs).sum().backward()
    assert enc.queries.grad is not None and enc.queries.grad.abs().sum() > 0


def test_hawk_base_has_the_transformers_addressing_and_interventions(tiny_dataset):
    """Issue 32: the Hawk base is a HookedRootModule with the same residual hook names; a
    cached residual is the stream a split forward hands over, and an intervention at layer
    ``l`` equals running the upper blocks on ``e + U e`` computed by hand."""
    from irl_lens.hooks import intervene, layer_hook_name
    from irl_lens.models.hawk import HawkActionModel

    model = build_model(tiny_model_config(arch="hawk"), seed=0).eval()
    assert isinstance(model, HawkActionModel) and model.cfg.n_layers == 2
    obs = make_batch(tiny_dataset, np.arange(3)).obs
    with torch.no_grad():
        full, cache = model.run_with_cache(obs)
        assert isinstance(cache, ActivationCache)
        for layer in (0, 1, 2):
            e = model(obs, stop_at_layer=layer)
            torch.testing.assert_close(cache[layer_hook_name(model, layer)], e)
            torch.testing.assert_close(model(e, start_at_layer=layer), full)
        u = torch.randn(32, 32, generator=torch.Generator().manual_seed(0)) * 0.1
        e1 = model(obs, stop_at_layer=1)
        want = model(e1 + torch.einsum("ij,bpj->bpi", u, e1), start_at_layer=1)
        with intervene(model, 1, lambda e: e + e @ u.T):
            got = model(obs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="recurrent state"):
        model(obs, past_kv_cache=object())
    model.train()
    model.losses(model(obs), *_targets(tiny_dataset))[0].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_hawk_gates_are_block_diagonal_with_one_block_per_head():
    """Griffin's gates: ``heads`` independent maps, equal to one matrix whose off-diagonal
    blocks are zero (an explicit matmul); the Hawk base builds them from ``n_heads``."""
    from irl_lens.models.ssm import BlockDiagonalLinear

    torch.manual_seed(0)
    lin = BlockDiagonalLinear(8, 6, heads=2)
    full = torch.zeros(8, 6)
    full[:4, :3], full[4:, 3:] = lin.weight[0].detach(), lin.weight[1].detach()
    x = torch.randn(5, 3, 8)
    torch.testing.assert_close(lin(x), x @ full + lin.bias.detach())
    with pytest.raises(ValueError, match="divide"):
        BlockDiagonalLinear(8, 6, heads=4)
    model = build_model(tiny_model_config(arch="hawk", n_heads=2), seed=0)
    assert model.blocks[0].hawk.rnn.gates.r.weight.shape == (2, 16, 16)


def _targets(tiny_dataset):
    batch = make_batch(tiny_dataset, np.arange(3))
    return batch.action.clamp(min=0), batch.next_obs.clamp(min=0), batch.mask.float()


def test_path_tables_relaxed_on_the_device_equal_the_bfs(tiny_dataset):
    """Issue 30: the accelerator's path tables (relaxation as tensor ops, no host round
    trip) equal the expert's BFS, also on boards that lack a colour or wall a colour in."""
    from irl_lens.models.base import _layout_paths, _layout_paths_on_device

    layouts = torch.from_numpy(tiny_dataset.arrays["layout"].astype(np.int64))
    odd = layouts[:3].clone()
    odd[0][odd[0] == 3] = 0  # colour 3 missing: unreachable everywhere
    c = int(torch.nonzero(odd[1] == 5)[0])
    for d in (-7, 7, -1, 1):  # colour 5 walled in (walls off the board are skipped)
        if 0 <= c + d < 49 and odd[1][c + d] == 0:
            odd[1][c + d] = 9
    boards = torch.cat([layouts, odd])
    torch.testing.assert_close(_layout_paths_on_device(boards), _layout_paths(boards))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_path_features_on_cuda_equal_the_cpus(tiny_dataset):
    from irl_lens.models.base import path_features

    obs = make_batch(tiny_dataset, np.arange(4)).obs
    want = path_features(obs[..., :49], obs[..., 49])
    got = path_features(obs[..., :49].cuda(), obs[..., 49].cuda())
    for w, g in zip(want, got, strict=True):
        assert g.is_cuda and torch.equal(g.cpu(), w)


def test_path_memo_gives_the_same_features(tiny_dataset):
    from irl_lens.models.base import PathMemo, path_features

    obs = make_batch(tiny_dataset, np.arange(5)).obs
    memo = PathMemo()
    for t in (0, 1, 1, 2):  # a repeat (memo hit), then new agent cells on the same boards
        want = path_features(obs[:, t, :49], obs[:, t, 49])
        got = path_features(obs[:, t, :49], obs[:, t, 49], memo)
        for a, b in zip(want, got, strict=True):
            assert torch.equal(a, b)
    other = make_batch(tiny_dataset, np.arange(5, 10)).obs[:, 0]
    for a, b in zip(
        path_features(other[:, :49], other[:, 49]),
        path_features(other[:, :49], other[:, 49], memo),
        strict=True,
    ):
        assert torch.equal(a, b)  # new boards: the memo recomputes
