"""Metacontroller and RG-LRU: the traps (e + U e, integrated z_{t-1}, step == forward, padding)."""

from __future__ import annotations

import pytest
import torch

from irl_lens.models.metacontroller import MetacontrollerConfig, build_metacontroller
from irl_lens.models.ssm import RGLRU, HawkBlock, linear_scan


def _mc(rank=4, **kw):
    cfg = MetacontrollerConfig(d_model=16, n_z=3, n_h=5, n_s=6, d_enc=12, d_dec=7, rank=rank, **kw)
    mc = build_metacontroller(cfg, seed=0).eval()
    with torch.no_grad():  # a non-zero decoder, so U is not trivially 0
        for p in mc.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return mc


def test_linear_scan_equals_the_recurrence():
    g = torch.Generator().manual_seed(0)
    log_a = -torch.rand(3, 9, 4, generator=g) * 3
    b = torch.randn(3, 9, 4, generator=g)
    h, expected = torch.zeros(3, 4), []
    for t in range(9):
        h = log_a[:, t].exp() * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_scan(log_a, b), torch.stack(expected, 1))


@pytest.mark.parametrize("n_pos", [1, 2, 3, 8, 9, 100, 257])
def test_the_doubling_scan_equals_the_loop_with_its_gradients(n_pos):
    """Issue 30: the GPU's scan (``doubling``) against the CPU's loop, forward and backward."""
    g = torch.Generator().manual_seed(n_pos)
    log_a0 = -torch.rand(3, n_pos, 5, generator=g) * 2
    b0 = torch.randn(3, n_pos, 5, generator=g)
    w = torch.randn(3, n_pos, 5, generator=g)
    results = {}
    for method in ("loop", "doubling"):
        log_a, b = log_a0.clone().requires_grad_(), b0.clone().requires_grad_()
        h = linear_scan(log_a, b, method=method)
        (h * w).sum().backward()
        results[method] = (h.detach(), log_a.grad, b.grad)
    for got, want in zip(results["doubling"], results["loop"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert linear_scan(log_a0, b0, method="auto").equal(results["loop"][0])  # CPU: the loop
    with pytest.raises(ValueError, match="method"):
        linear_scan(log_a0, b0, method="fast")


def test_rglru_and_hawk_step_equal_forward():
    torch.manual_seed(0)
    rnn, block = RGLRU(6), HawkBlock(6, d_rnn=5, d_mlp=8)
    x = torch.randn(2, 7, 6)
    h, hb, outs, houts = None, None, [], []
    for t in range(7):
        h = rnn.step(x[:, t], h)
        houts.append(h)
        y, hb = block.step(x[:, t], hb)
        outs.append(y)
    torch.testing.assert_close(rnn(x), torch.stack(houts, 1))
    torch.testing.assert_close(block(x), torch.stack(outs, 1))
    # reverse=True runs from the last position: position 0 then depends on the future
    rev = rnn(x, reverse=True)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(rnn(x2, reverse=True)[:, 0], rev[:, 0])


def test_controller_is_e_plus_U_e_against_an_explicit_matmul():
    for rank in (4, None):
        mc = _mc(rank=rank)
        e = torch.randn(2, 5, 16)
        z = torch.randn(2, 5, 3)
        U = mc.matrices(z)  # [2, 5, 16, 16]
        assert U.abs().max() > 0
        explicit = torch.stack(
            [torch.stack([e[b, t] + U[b, t] @ e[b, t] for t in range(5)]) for b in range(2)]
        )
        torch.testing.assert_close(mc.apply_code(e, z), explicit, atol=1e-5, rtol=1e-5)
        if rank is not None:
            assert torch.linalg.matrix_rank(U[0, 0]) <= rank


def test_switch_reads_the_integrated_latent_and_step_equals_forward():
    mc = _mc()
    e = torch.randn(3, 8, 16)
    with torch.no_grad():
        out = mc(e, sample=False)
        carry = mc.initial_carry(3)
        for t in range(8):
            # beta_t is f(e_t, h_{t-1}, z_{t-1}) with the INTEGRATED z_{t-1} = out.z[:, t-1]
            beta = mc.switch_probability(e[:, t], carry)
            torch.testing.assert_close(beta, out.beta[:, t])
            if t > 0:
                torch.testing.assert_close(carry.z, out.z[:, t - 1])
            e_hat, beta_s, carry = mc.step(e[:, t], carry, out.z_tilde[:, t])
            torch.testing.assert_close(beta_s, out.beta[:, t])
            torch.testing.assert_close(e_hat, out.e_hat[:, t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(carry.z, out.z[:, t])
        # z_t = beta_t z~_t + (1 - beta_t) z_{t-1}
        b = out.beta.unsqueeze(-1)
        z_prev = torch.cat([torch.zeros_like(out.z[:, :1]), out.z[:, :-1]], 1)
        torch.testing.assert_close(out.z, b * out.z_tilde + (1 - b) * z_prev)


def test_beta_override_and_padding():
    mc = _mc()
    e = torch.randn(2, 6, 16)
    with torch.no_grad():
        assert torch.equal(mc(e, beta_override=1.0, sample=False).beta, torch.ones(2, 6))
        mask = torch.ones(2, 6)
        mask[1, 4:] = 0
        a = mc(e, mask, sample=False)
        e2 = e.clone()
        e2[1, 4:] = 100.0  # garbage in the padding
        b = mc(e2, mask, sample=False)
    torch.testing.assert_close(a.e_hat[1, :4], b.e_hat[1, :4])
    torch.testing.assert_close(a.beta[1, :4], b.beta[1, :4])


def test_hook_points_are_cached():
    mc = _mc()
    _, cache = mc.run_with_cache(torch.randn(1, 4, 16), sample=False)
    for name in ("hook_switch_gate", "hook_latent_proposal", "hook_latent_z",
                 "hook_controller_out", "hook_seq_embedding"):  # fmt: skip
        assert name in cache
    assert cache["hook_switch_gate"].shape == (1, 4)


def test_gumbel_switch_is_noisy_only_when_sampling():
    mc = _mc(switch="gumbel")
    e = torch.randn(2, 5, 16)
    with torch.no_grad():
        a = mc(e, sample=True, generator=torch.Generator().manual_seed(0)).beta
        b = mc(e, sample=True, generator=torch.Generator().manual_seed(1)).beta
        c = mc(e, sample=False).beta
        d = mc(e, sample=False).beta
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


def test_kl_matches_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    from irl_lens.models.metacontroller import gaussian_kl

    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu, logvar), expected)


def test_beta_is_causal_and_the_encoder_is_not():
    """Given the same proposals, changing e_T leaves beta_{<T} alone; s and mu see the future."""
    mc = _mc()
    e = torch.randn(2, 7, 16)
    e2 = e.clone()
    e2[:, -1] += 1.0  # change only the last position
    proposals = torch.randn(2, 7, 3)
    with torch.no_grad():
        betas = []
        for x in (e, e2):
            carry, bs = mc.initial_carry(2), []
            for t in range(7):
                _, beta, carry = mc.step(x[:, t], carry, proposals[:, t])
                bs.append(beta)
            betas.append(torch.stack(bs, 1))
        a, b = mc(e, sample=False), mc(e2, sample=False)
    torch.testing.assert_close(betas[0][:, :-1], betas[1][:, :-1])  # beta_{<T} unchanged
    assert not torch.allclose(betas[0][:, -1], betas[1][:, -1])  # beta_T reads e_T
    s_a = mc.sequence_embedding(e, torch.ones(2, 7))
    s_b = mc.sequence_embedding(e2, torch.ones(2, 7))
    assert s_a.shape == (2, 6)  # one vector per sequence
    assert not torch.allclose(s_a, s_b)  # s sees the future
    assert not torch.allclose(a.mu[:, 0], b.mu[:, 0])  # so does the encoder


def test_the_embedder_reads_e_embed_only_when_configured_to():
    e, other = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    with pytest.raises(ValueError, match="reads the control layer"):
        _mc()(e, e_embed=other)
    mc = _mc(embed_layer=3)
    with pytest.raises(ValueError, match="reads layer 3"):
        mc(e)
    with pytest.raises(ValueError, match=r"e_embed has shape \(2, 6, 16\)"):
        mc(e, e_embed=other[:, :6])
    with torch.no_grad():
        a, b = mc(e, e_embed=e, sample=False), mc(e, e_embed=other, sample=False)
        paper = _mc()(e, sample=False)
    torch.testing.assert_close(a.mu, paper.mu)  # e_embed = e: the paper's metacontroller
    assert not torch.allclose(a.mu, b.mu)  # the encoder sees the embedding of e_embed
    torch.testing.assert_close(a.beta[:, 0], b.beta[:, 0])  # beta_0 reads e_0 and h_-1 only
    with pytest.raises(ValueError, match="embed_layer=-1"):
        MetacontrollerConfig(d_model=16, embed_layer=-1)


def test_switch_unit_reads_h_and_z_of_the_previous_step():
    mc = _mc()
    e = torch.randn(1, 5, 16)
    with torch.no_grad():
        out = mc(e, sample=False)
        h_all, _ = mc.gru(e)
        from irl_lens.models.metacontroller import StepCarry

        t = 3
        carry = StepCarry(h_all[:, t - 1], out.z[:, t - 1])
        torch.testing.assert_close(mc.switch_probability(e[:, t], carry), out.beta[:, t])
        wrong = StepCarry(h_all[:, t - 1], out.z_tilde[:, t - 1])  # proposal, not integrated
        assert not torch.allclose(mc.switch_probability(e[:, t], wrong), out.beta[:, t])


def test_bench_times_both_scans(monkeypatch):
    from irl_lens.cli import bench

    monkeypatch.setattr(bench, "SCAN_SHAPES", {"tiny": (4, 16, 8)})
    out = bench.scan_throughput(seconds=0.01, seed=0)
    assert out["ssm_scan_tiny_loop_ms"] > 0 and out["ssm_scan_tiny_doubling_ms"] > 0
    assert out["ssm_scan_tiny_doubling_vs_loop"] == pytest.approx(
        out["ssm_scan_tiny_loop_ms"] / out["ssm_scan_tiny_doubling_ms"]
    )
