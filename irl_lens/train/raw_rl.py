"""Raw-action RL: the internal-RL optimiser applied to the base model's own actions (baseline).

Same task, batch, budget, advantage and PPO update (:mod:`irl_lens.train.rl`) as
:mod:`irl_lens.train.internal_rl`, but the policy is the pretrained base model itself:
every raw step is an action, and PPO finetunes all of the base model's weights (paper:
"GRPO-like" raw-action RL). Rollouts run in the batched engine (key/value cache); the
update recomputes the log-probabilities with one full-sequence forward pass per epoch.

A run folder (``kind = "internal_rl"``, ``method = "raw_rl"``) has the same layout as an
internal-RL folder, with the finetuned base in ``policy.safetensors``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from irl_lens import runs
from irl_lens.envs.pinpad import format_task
from irl_lens.models.base import ActionModel, load_base_model
from irl_lens.rollout.kit import env_kit
from irl_lens.train import rl


@dataclass
class RawBatch:
    obs: torch.Tensor  # [n, T, 50] gridworld observation tokens, or [n, T, 41] ant vectors
    action: torch.Tensor  # [n, T] gridworld moves, or [n, T, 8] ant torques
    logp: torch.Tensor  # [n, T]
    mask: torch.Tensor  # [n, T]
    returns: np.ndarray
    success: np.ndarray
    length: np.ndarray
    n_abstract: np.ndarray  # = length: every raw step is a decision
    seconds: float
    sample: list[dict]


def collect_raw(model: ActionModel, task, n_episodes: int, *, seed: int, stream: int,
                n_sample: int = 0) -> RawBatch:  # fmt: skip
    """Sampled rollouts of the base model on ``task`` (no gradients), in its own env."""
    kit = env_kit(model)
    env = kit.make_env(n_episodes, task=task, seed=seed, stream=stream)
    gen = rl.stream_generator(seed, stream)
    model.eval()
    with torch.no_grad():
        ro = kit.engine.run(env, generator=gen)
    valid = ro.valid
    sample = [ro.episode(i) for i in range(min(n_sample, n_episodes))]
    return RawBatch(
        obs=ro.model_inputs(),
        action=torch.from_numpy(np.maximum(ro.action, 0) if ro.action.ndim == 2 else ro.action),
        logp=torch.from_numpy(ro.action_logp),
        mask=torch.from_numpy(valid).float(),
        returns=ro.reward.sum(1),
        success=ro.success.copy(),
        length=ro.length.copy(),
        n_abstract=ro.length.copy(),
        seconds=ro.seconds,
        sample=sample,
    )


def action_log_prob(model: ActionModel, params: torch.Tensor, actions: torch.Tensor) -> Tensor:
    """``log p(a_t | o_1:t)`` ``[n, T]`` under the action head: categorical logits
    (gridworld) or the Gaussian over torques (ant)."""
    if model.model_cfg.action_kind == "continuous":
        return model.action_distribution(params).log_prob(actions)
    logp = -F.cross_entropy(params.flatten(0, 1), actions.flatten(), reduction="none")
    return logp.view(actions.shape)


def length_chunks(lengths: np.ndarray, max_episodes: int = 256,
                  max_tokens: int = 16_384) -> list[np.ndarray]:  # fmt: skip
    """Episode indices sorted by length, cut into chunks of at most ``max_episodes`` whose
    padded size (episodes x the chunk's longest) stays within ``max_tokens`` (one episode
    at least). Short episodes share a chunk; a 500-step ant episode does not pad 255
    short ones to its length."""
    order = np.argsort(lengths, kind="stable")
    chunks, start = [], 0
    for i in range(1, len(order) + 1):
        if i < len(order):  # would episode order[i] (the longest so far) still fit?
            size, longest = i + 1 - start, max(1, int(lengths[order[i]]))
            if size <= max_episodes and size * longest <= max_tokens:
                continue
        chunks.append(order[start:i])
        start = i
    return chunks


def raw_ppo_update(model: ActionModel, opt, batch: RawBatch, cfg: rl.RLConfig,
                   chunk: int = 256) -> dict[str, float]:  # fmt: skip
    """``cfg.epochs`` whole-batch steps of :func:`irl_lens.train.rl.ppo_update` over the base
    model's action log-probabilities, each accumulated over length-sorted pieces of at most
    ``chunk`` episodes; returns the last epoch's stats."""
    device = next(model.parameters()).device
    advantages = torch.from_numpy(rl.trajectory_advantages(batch.returns)).float()[:, None]
    data = rl.PPOBatch(logp=batch.logp, advantages=advantages, mask=batch.mask)

    def length_pieces(mb_inds) -> list[rl.Piece]:
        # episodes sorted by length, each piece cut to its longest episode: the model is
        # causal, so dropping padding after the last real step changes no output
        rows = np.arange(len(batch.length))[mb_inds]  # the minibatch's episodes
        return [
            rl.Piece(torch.from_numpy(rows[idx]), t_max=max(1, int(batch.length[rows[idx]].max())))
            for idx in length_chunks(batch.length[rows], max_episodes=chunk)
        ]

    def evaluate(piece: rl.Piece) -> rl.PolicyEval:
        obs, act = piece.take(batch.obs).to(device), piece.take(batch.action).to(device)
        params = model.split(model(obs)).action_params
        return rl.PolicyEval(logp=action_log_prob(model, params, act))

    model.train()
    last = rl.ppo_update(evaluate, opt, data, cfg.ppo, split=length_pieces)[-1]
    model.eval()
    return {"loss": last.loss, "clip_fraction": last.clip_fraction, "approx_kl": last.approx_kl}


def raw_rl(
    run: str | Path,
    out: str | Path,
    cfg: rl.RLConfig,
    *,
    device: str = "cpu",
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Finetune the base model of ``run`` with PPO on raw actions."""
    out = Path(out)
    model = load_base_model(run).to(device, print_details=False)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    task = env_kit(model).parse_task(cfg.task)
    config = {
        "kind": rl.KIND,
        "version": runs.RUN_VERSION,
        "base_run": str(run),
        "base_run_ref": runs.run_ref(run, out),
        "method": "raw_rl",
        "task": format_task(task),
        "train": dataclasses.asdict(cfg),
    }
    start = rl.create_or_resume(out, config, resume, model, opt)
    return rl.batch_loop(
        out, cfg, start, opt, model,
        collect_fn=lambda b, n_sample: collect_raw(model, task, cfg.batch_size, seed=cfg.seed,
                                                   stream=b, n_sample=n_sample),
        update_fn=lambda batch: raw_ppo_update(model, opt, batch, cfg),
        stop_after=stop_after, progress=progress, desc="raw-action RL",
    )  # fmt: skip
