"""The engine's env-adapter protocol: a new environment needs only an adapter.

A toy batched env (a corridor: an episode ends once its agent has walked ``goal`` cells to
the right; action 3 moves right, the others stay) runs through the one episode loop of
:class:`~irl_lens.rollout.engine.RolloutEngine` and must give the same action-head outputs
as the full-sequence forward pass, with and without compaction and a controller.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irl_lens.hooks import intervene
from irl_lens.models.base import ActionModel
from irl_lens.rollout.engine import EnvAdapter, EpisodeBatch, RolloutEngine, Tape, reset_seeded


class Corridor:
    """``n_envs`` corridors; env ``i`` ends ``goal[i]`` cells right of a seeded start."""

    def __init__(self, goal: list[int]) -> None:
        self.n_envs, self.distance = len(goal), np.asarray(goal)
        self.reset()

    def reset(self, seed=None) -> None:
        start = np.random.default_rng(seed[0] if seed else 0).integers(0, 3)
        self.pos = np.full(self.n_envs, start, dtype=np.int64)
        self.goal = self.distance + start
        self.t = np.zeros(self.n_envs, dtype=np.int64)
        self.done = np.zeros(self.n_envs, dtype=bool)

    def step(self, actions: np.ndarray) -> np.ndarray:
        live = ~self.done
        self.pos[live] += actions[live] == 3
        self.t[live] += 1
        reached = live & (self.pos >= self.goal)
        self.done |= reached | (self.t >= 40)
        return reached.astype(np.float32)


class CorridorRollout(EpisodeBatch):
    def __init__(self, tape: Tape, pos: np.ndarray) -> None:
        self.tape, self.pos = tape, pos
        self.reward, self.length = tape.reward, tape.length

    def tokens(self) -> torch.Tensor:  # [n_envs, n_steps, 50]: layout 0, agent cell
        tok = np.zeros((*self.pos.shape, 50), dtype=np.int64)
        tok[..., 49] = np.maximum(self.pos, 0)
        return torch.from_numpy(tok)


class CorridorAdapter(EnvAdapter[CorridorRollout]):
    time_limit = 40

    @classmethod
    def check_model(cls, model: ActionModel) -> None:
        if model.model_cfg.action_kind != "discrete":
            raise ValueError("the corridor needs discrete actions")

    def __init__(self, env: Corridor, model, max_steps: int, device) -> None:
        super().__init__(env, model, max_steps, device)
        self.pos = np.full((env.n_envs, max_steps), -1, dtype=np.int64)
        self.actions = np.zeros(env.n_envs, dtype=np.int64)

    def empty_actions(self) -> np.ndarray:
        return np.full((self.env.n_envs, self.max_steps), -1, dtype=np.int64)

    def observe(self, t: int, rows: np.ndarray) -> None:
        self.pos[rows, t] = self.env.pos[rows]

    def inputs(self, rows: np.ndarray) -> torch.Tensor:
        tok = torch.zeros(len(rows), 1, 50, dtype=torch.long)
        tok[:, 0, 49] = torch.from_numpy(self.env.pos[rows])
        return tok.to(self.device)

    def act(self, head, greedy, generator):
        log_probs = torch.log_softmax(head, -1)
        a = (
            log_probs.argmax(-1)
            if greedy
            else torch.multinomial(log_probs.exp(), 1, generator=generator)[:, 0]
        )
        return a, log_probs.gather(-1, a[:, None])[:, 0]

    def step(self, rows: np.ndarray, actions: np.ndarray) -> np.ndarray:
        self.actions[rows] = actions
        return self.env.step(self.actions)

    def result(self, tape: Tape) -> CorridorRollout:
        return CorridorRollout(tape, self.pos)


def _run(model, env, **kw) -> CorridorRollout:
    engine = RolloutEngine(model, 1, adapter=CorridorAdapter)
    return engine.run(env, generator=torch.Generator().manual_seed(0), record_logits=True, **kw)


@pytest.mark.parametrize("compact", [True, False])
def test_a_new_env_runs_through_the_one_loop_and_equals_the_full_forward(tiny_model, compact):
    double = lambda e: 2 * e  # noqa: E731  (a controller on every step)
    env = Corridor([1, 2, 3, 5, 8, 13])
    ro = _run(tiny_model, env, compact=compact, controller_fn=lambda state: double)
    assert ro.n_steps == CorridorAdapter.time_limit  # the adapter's time limit by default
    np.testing.assert_array_equal(ro.length, env.t)
    assert len(set(ro.length.tolist())) > 2  # episodes end at different times (compaction)
    assert (ro.tape.action[ro.valid] >= 0).all() and (ro.tape.action[~ro.valid] == -1).all()
    T = int(ro.length.max())
    with torch.no_grad(), intervene(tiny_model, 1, double):
        full = tiny_model.split(tiny_model(ro.tokens()[:, :T])).action_params
    valid = torch.from_numpy(ro.valid[:, :T])
    torch.testing.assert_close(ro.tape.head[:, :T][valid], full[valid], rtol=1e-4, atol=1e-5)
    logp = torch.log_softmax(full, -1).gather(
        -1, torch.from_numpy(ro.tape.action[:, :T]).clamp(min=0)[..., None]
    )[..., 0]
    torch.testing.assert_close(
        torch.from_numpy(ro.tape.action_logp[:, :T])[valid], logp[valid], rtol=1e-4, atol=1e-5
    )


def test_done_envs_are_left_out_and_seeded_resets_repeat(tiny_model):
    env = reset_seeded(Corridor([4, 4, 4]), seed=3, stream=1)
    np.testing.assert_array_equal(env.pos, reset_seeded(Corridor([4, 4, 4]), 3, 1).pos)
    env.done[1] = True  # already over: not stepped, length 0
    ro = _run(tiny_model, env, greedy=True, max_steps=6)
    assert ro.length[1] == 0 and (ro.length[[0, 2]] > 0).all()
    assert (ro.pos[1] == -1).all() and (ro.tape.action[1] == -1).all()


def test_the_protocol_is_enforced(tiny_model):
    with pytest.raises(TypeError):
        RolloutEngine(tiny_model, 1)  # no adapter: the engine knows no environment
    with pytest.raises(TypeError):
        EnvAdapter(None, tiny_model, 10, "cpu")  # abstract

    class Continuous(CorridorAdapter):
        @classmethod
        def check_model(cls, model):
            raise ValueError("needs continuous actions")

    with pytest.raises(ValueError, match="continuous"):
        RolloutEngine(tiny_model, adapter=Continuous)
