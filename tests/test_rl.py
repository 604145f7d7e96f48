"""The PPO core (irl_lens.train.rl): advantage estimators and the clipped surrogate against
hand-computed values, and the update loop's invariants on a three-action toy policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from irl_lens.train import rl

# ------------------------------------------------------------------------------ advantages


def test_gae_by_hand_with_a_terminal_and_a_bootstrap():
    # two envs, three steps; gamma = lam = 0.5 keep every number exact in float32
    rewards = np.array([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0]], dtype=np.float32)
    values = np.array([[0.5, 0.0], [1.0, 0.5], [1.5, 0.25]], dtype=np.float32)
    dones = np.array([[0, 0], [0, 1], [0, 0]], dtype=np.float32)  # env 1 ends at step 1
    last = np.array([2.0, 1.0], dtype=np.float32)
    adv, ret = rl.gae(rewards, values, dones, last, gamma=0.5, lam=0.5)
    # env 0: deltas 3 + .5*2 - 1.5 = 2.5 | 2 + .5*1.5 - 1 = 1.75 | 1 + .5*1 - .5 = 1
    #        A2 = 2.5, A1 = 1.75 + .25*2.5 = 2.375, A0 = 1 + .25*2.375 = 1.59375
    # env 1: t=2: 1 + .5*1 - .25 = 1.25; t=1 is terminal: 1 - .5 = .5 (no bootstrap, no
    #        carry); t=0: 1 + .5*.5 - 0 = 1.25, A0 = 1.25 + .25*.5 = 1.375
    expected = np.array([[1.59375, 1.375], [2.375, 0.5], [2.5, 1.25]], dtype=np.float32)
    np.testing.assert_array_equal(adv, expected)
    np.testing.assert_array_equal(ret, expected + values)
    assert adv.dtype == np.float32 and adv.shape == (3, 2)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_gae_limits_are_td_error_and_monte_carlo(lam):
    rewards = np.array([[1.0], [0.0], [2.0]])
    values = np.array([[0.5], [0.25], [1.0]])
    dones = np.zeros((3, 1))
    last = np.array([4.0])
    adv, _ = rl.gae(rewards, values, dones, last, gamma=0.5, lam=lam)
    nxt = np.array([0.25, 1.0, 4.0])
    if lam == 0.0:  # one-step TD errors
        expected = rewards[:, 0] + 0.5 * nxt - values[:, 0]
    else:  # discounted return to the end, bootstrapped, minus the value
        g2 = 2.0 + 0.5 * 4.0
        g1 = 0.0 + 0.5 * g2
        g0 = 1.0 + 0.5 * g1
        expected = np.array([g0, g1, g2]) - values[:, 0]
    np.testing.assert_array_equal(adv[:, 0], expected)


def test_trajectory_advantages_by_hand():
    np.testing.assert_array_equal(rl.trajectory_advantages([3.0, 1.0]), [1 / 1.001, -1 / 1.001])
    np.testing.assert_array_equal(rl.trajectory_advantages([2.0, 2.0, 2.0]), [0.0, 0.0, 0.0])
    # mean 1, std sqrt(8/3)
    adv = rl.trajectory_advantages([3.0, 1.0, -1.0])
    np.testing.assert_allclose(adv, np.array([2.0, 0.0, -2.0]) / (math.sqrt(8 / 3) + 1e-3))


# ------------------------------------------------------------------------------ surrogate


def test_clipped_surrogate_by_hand_with_a_mask():
    ratios = torch.tensor([1.5, 0.9, 1.0, 0.7, 0.7])
    adv = torch.tensor([2.0, 2.0, -1.0, -1.0, 5.0])
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])  # the last entry does not count
    old = torch.zeros(5)
    loss, clip_frac, approx_kl = rl.clipped_surrogate(ratios.log(), old, adv, mask, clip=0.2)
    # min(r A, clip(r) A): 1.5*2 -> 1.2*2 = 2.4 | 0.9*2 = 1.8 | -1 | min(-0.7, -0.8) = -0.8
    assert loss.item() == pytest.approx(-(2.4 + 1.8 - 1.0 - 0.8) / 4)
    assert clip_frac == pytest.approx(2 / 4)  # 1.5 and 0.7 lie outside [0.8, 1.2]
    kl = -(math.log(1.5) + math.log(0.9) + math.log(0.7)) / 4
    assert approx_kl == pytest.approx(kl, rel=1e-5)  # float32


# ------------------------------------------------------------------------------ the update

ACTIONS = torch.tensor([[0, 1, 2], [2, 2, 0], [1, 0, 0], [0, 0, 0]])  # [n=4, T=3]
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])


def _toy(mask=MASK, advantages=None):
    """A categorical policy over three actions (one logit vector for every row)."""
    logits = torch.nn.Parameter(torch.tensor([0.2, -0.1, 0.3]))
    with torch.no_grad():
        logp = torch.log_softmax(logits, -1)[ACTIONS]
    adv = advantages if advantages is not None else torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    batch = rl.PPOBatch(logp=logp, advantages=adv, mask=mask)

    def evaluate(piece):
        return rl.PolicyEval(logp=torch.log_softmax(logits, -1)[piece.take(ACTIONS)])

    return logits, batch, evaluate


def test_first_step_has_ratio_one_and_the_masked_mean_advantage():
    logits, batch, evaluate = _toy()
    opt = torch.optim.SGD([logits], lr=0.1)
    steps = rl.ppo_update(evaluate, opt, batch, rl.PPOSettings(epochs=3, clip=0.2))
    assert len(steps) == 3
    first = steps[0]
    assert first.approx_kl == 0.0 and first.clip_fraction == 0.0
    # mask counts 3, 2, 1, 2 steps: -(3*1 - 2*2 + 0.5 + 2*3) / 8
    assert first.policy_loss == pytest.approx(-5.5 / 8)
    assert first.loss == first.policy_loss and first.value_loss == first.entropy == 0.0
    assert steps[-1].policy_loss < first.policy_loss  # it learns
    assert steps[-1].approx_kl != 0.0


def test_pieces_accumulate_to_the_whole_batch_gradient():
    """Raw RL's split (pieces cut to their longest episode) steps exactly as one batch."""
    whole, batch, evaluate = _toy()
    rl.ppo_update(evaluate, torch.optim.SGD([whole], lr=0.5), batch, rl.PPOSettings(1, 0.2))
    pieced, batch, evaluate = _toy()

    def split(mb_inds):
        return [rl.Piece(torch.tensor([2, 1]), t_max=2), rl.Piece(torch.tensor([0, 3]), t_max=3)]

    steps = rl.ppo_update(evaluate, torch.optim.SGD([pieced], lr=0.5), batch,
                          rl.PPOSettings(1, 0.2), split=split)  # fmt: skip
    torch.testing.assert_close(pieced, whole)
    assert steps[0].policy_loss == pytest.approx(-5.5 / 8)


def test_shuffled_minibatches_cover_every_row_once_per_epoch():
    logits, batch, evaluate = _toy(mask=None, advantages=torch.tensor([1.0, -2.0, 0.5, 3.0]))
    batch.logp = batch.logp[:, 0]
    seen = []

    def first_step(piece):
        seen.append(piece.index.tolist())
        return rl.PolicyEval(logp=torch.log_softmax(logits, -1)[ACTIONS[piece.index, 0]])

    settings = rl.PPOSettings(epochs=2, clip=0.2, n_minibatches=2, normalize_advantages=True)
    gen = torch.Generator().manual_seed(0)
    steps = rl.ppo_update(first_step, torch.optim.SGD([logits], lr=0.1), batch, settings,
                          generator=gen)  # fmt: skip
    assert len(steps) == 4 and all(len(s) == 2 for s in seen)
    for epoch in (seen[:2], seen[2:]):
        assert sorted(epoch[0] + epoch[1]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="without a mask"):
        rl.ppo_update(evaluate, torch.optim.SGD([logits], lr=0.1), _toy()[1], settings)


def test_value_and_entropy_terms_enter_the_loss():
    logits = torch.nn.Parameter(torch.zeros(3))
    value = torch.nn.Parameter(torch.tensor(1.0))
    actions = torch.tensor([0, 1, 2, 0])
    batch = rl.PPOBatch(
        logp=torch.full((4,), -math.log(3.0)),
        advantages=torch.tensor([1.0, 0.0, 0.0, -1.0]),
        returns=torch.tensor([0.0, 1.0, 2.0, 3.0]),
    )

    def evaluate(piece):
        dist = torch.distributions.Categorical(logits=logits.expand(4, 3)[piece.index])
        v = value.expand(4)[piece.index]
        return rl.PolicyEval(logp=dist.log_prob(actions[piece.index]), value=v,
                             entropy=dist.entropy())  # fmt: skip

    settings = rl.PPOSettings(epochs=1, clip=0.2, vf_coef=0.5, ent_coef=0.1, max_grad_norm=1.0)
    opt = torch.optim.SGD([logits, value], lr=1.0)
    (step,) = rl.ppo_update(evaluate, opt, batch, settings)
    assert step.policy_loss == pytest.approx(0.0)  # ratio 1, mean advantage 0
    assert step.value_loss == pytest.approx(0.5 * (1 + 0 + 1 + 4) / 4)
    assert step.entropy == pytest.approx(math.log(3.0))
    assert step.loss == pytest.approx(0.5 * step.value_loss - 0.1 * math.log(3.0))
    # the value's gradient 0.5 * mean(v - R) = -0.25 is under the clip norm: one SGD step
    assert value.item() == pytest.approx(1.25)


def test_a_batch_without_reward_steps_the_optimiser_exactly_without_evaluating_the_policy():
    """Every advantage 0 (no episode succeeded): the gradient is exactly 0, so the update
    skips the policy's passes; Adam's momentum still moves the weights, exactly as the full
    update (by hand here) does. A term of its own (weight decay, a critic, an entropy
    bonus) keeps the full update."""
    zero = torch.zeros(4, 1)
    after = {}
    for path in ("skip", "by hand"):
        logits, batch, evaluate = _toy()
        opt = torch.optim.Adam([logits], lr=0.1)
        rl.ppo_update(evaluate, opt, batch, rl.PPOSettings(epochs=2, clip=0.2))  # momentum
        before = logits.detach().clone()
        quiet = rl.PPOBatch(logp=batch.logp, advantages=zero, mask=batch.mask)
        calls = []

        def counted(piece, evaluate=evaluate, calls=calls):
            calls.append(piece)
            return evaluate(piece)

        if path == "skip":
            steps = rl.ppo_update(counted, opt, quiet, rl.PPOSettings(epochs=3, clip=0.2))
            assert calls == [] and len(steps) == 3
            assert all(s.loss == s.policy_loss == 0.0 for s in steps)
            assert all(math.isnan(s.approx_kl) and math.isnan(s.clip_fraction) for s in steps)
        else:
            for _ in range(3):
                opt.zero_grad()
                loss = rl.clipped_surrogate(counted(rl.Piece(slice(None))).logp, quiet.logp,
                                            zero, quiet.mask, 0.2)[0]  # fmt: skip
                loss.backward()
                assert logits.grad.abs().max() == 0.0
                opt.step()
        after[path] = logits.detach().clone()
        assert not torch.equal(after[path], before)  # momentum moved it
    assert torch.equal(after["skip"], after["by hand"])
    logits, batch, evaluate = _toy(advantages=zero)
    calls = []

    def counted(piece):
        calls.append(piece)
        return evaluate(piece)

    decay = torch.optim.AdamW([logits], lr=0.1, weight_decay=0.01)
    rl.ppo_update(counted, decay, batch, rl.PPOSettings(epochs=1, clip=0.2))
    for terms in ({"ent_coef": 0.01}, {"vf_coef": 0.5}):  # an entropy bonus, a critic
        settings = rl.PPOSettings(epochs=1, clip=0.2, **terms)
        rl.ppo_update(counted, torch.optim.Adam([logits], lr=0.1), batch, settings)
    assert len(calls) == 3
