"""Discovery: train a metacontroller on clean expert data with the base model frozen (Section 3).

Loss per batch (paper Eq 3/9), averaged over real steps:

    L = -ln p(a_t | o_1:t, z_1:t)  [+ lambda * -ln p(o_t+1 | o_1:t, z_1:t)]
        [+ W * -ln p(next colour entered | o_1:t, z_1:t)]
        + alpha * [beta_t *] KL(N(mu_t, Sigma_t) || N(0, I))

(the factor ``beta_t`` only with ``rate="switch"``, see :func:`charged_kl`; the next-colour
term only for an ant base pretrained with that head,
``BaseModelConfig.next_colour_weight`` W: the controlled base's whole pretraining loss).

The metacontroller sees the residual stream at layer ``l`` through the one hook path
(:func:`irl_lens.hooks.intervene`): the hook hands it ``e_1:T`` and the base model's upper
blocks read ``e_hat_1:T``. Variants:

* ``full``: the method; only the metacontroller trains, the base stays bit-identical
  (checked at the end, the run fails otherwise);
* ``beta1``: the same with ``beta_t`` forced to 1 (a fresh code every step);
* ``cotrain``: base and metacontroller trained together, the base from scratch (paper, grid)
  or from the pretrained weights (``cotrain_from_pretrained``).

Logged: action NLL (distortion), KL (rate), mean beta and switches per episode at
threshold 0.5 next to the true number of subgoal segments. Checkpoints restore the exact
state (weights, optimizer, data position, RNG), so a resumed run ends where an
uninterrupted one would.

A metacontroller folder (``kind = "metacontroller"``) holds ``config.json``,
``metacontroller.safetensors`` (and ``base.safetensors`` for ``cotrain``), ``metrics.jsonl``,
``summary.json`` and ``checkpoints/``; :func:`load_metacontroller` rebuilds everything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedRootModule

from irl_lens import runs
from irl_lens.data.dataset import Batch, TrajectoryDataset, bucketed_batches, make_batch
from irl_lens.hooks import check_layer, n_layers_of, run_with_metacontroller
from irl_lens.models.base import ActionModel, build_model, load_base_model
from irl_lens.models.metacontroller import (
    KIND,
    Metacontroller,
    MetacontrollerConfig,
    MetacontrollerOutput,
    build_metacontroller,
    check_embed_layer,
    embedder_input,
    load_metacontroller,
)
from irl_lens.rollout.kit import env_kit, run_batches
from irl_lens.rollout.switchers import MetacontrollerDriver
from irl_lens.train.controllers import frozen
from irl_lens.train.loop import FirstNonFinite, autocast, fast_matmuls, guarded

logger = logging.getLogger(__name__)

VARIANTS = ("full", "beta1", "cotrain")
RATES = ("step", "switch")
SWITCH_THRESHOLD = 0.5


@dataclass
class DiscoverConfig:
    """How a metacontroller is trained (paper Tables A9/A10 for ``paper``)."""

    variant: str = "full"
    """``full``, ``beta1`` or ``cotrain`` (see the module docstring)."""
    alpha: float = 0.1
    """Weight of the KL (rate) term."""
    kl_free_steps: int = 0
    """The KL weight is 0 for these first steps, so the codes start carrying information.
    Without it the posterior can collapse at once (KL -> 0, beta -> 0, codes unused)."""
    kl_warmup_steps: int = 0
    """After the free steps, the KL weight ramps linearly from 0 to ``alpha`` over these."""
    rate: str = "step"
    """What the KL term charges (:func:`charged_kl`): ``step``, every step's proposal (Eq 3
    as written); ``switch``, each proposal weighted by its gate ``beta_t``, so holding a code
    is free and a switch pays for what the new code carries."""
    steps: int = 64_000
    """AdamW steps."""
    tokens_per_batch: int = 4096
    """Padded steps per batch (length-bucketed episodes)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 0.03
    """AdamW weight decay."""
    obs_loss_weight: float | None = None
    """lambda of the next-observation term; ``None``: the base model's own lambda."""
    cotrain_from_pretrained: bool = False
    """``cotrain`` only: start the base from the pretrained weights instead of from scratch."""
    grad_clip: float = 1.0
    """Clip the global gradient norm (0 disables)."""
    val_episodes: int = 200
    """Clean episodes held out for the logged validation metrics."""
    eval_every: int = 500
    """Validation metrics every this many steps."""
    log_every: int = 25
    """Training metrics every this many steps."""
    checkpoint_every: int = 500
    """Checkpoint every this many steps (exact resume)."""
    seed: int = 0
    """Seeds the initialisation, the data order and the latent noise."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}; allowed: {', '.join(VARIANTS)}")
        if self.rate not in RATES:
            raise ValueError(f"rate={self.rate!r}; allowed: {', '.join(RATES)}")
        for name in ("steps", "tokens_per_batch", "eval_every", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiscoverConfig.{name}={getattr(self, name)!r} must be >= 1")
        if self.kl_warmup_steps < 0 or self.kl_free_steps < 0:
            raise ValueError("DiscoverConfig.kl_free_steps and kl_warmup_steps must be >= 0")
        if self.alpha < 0:
            raise ValueError(f"alpha={self.alpha!r} must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} must be > 0")
        if self.weight_decay < 0 or self.val_episodes < 0:
            raise ValueError("DiscoverConfig.weight_decay and val_episodes must be >= 0")
        if self.obs_loss_weight is not None and self.obs_loss_weight < 0:
            raise ValueError(f"obs_loss_weight={self.obs_loss_weight!r} must be >= 0")

    def with_steps(self, steps: int) -> DiscoverConfig:
        """These settings over ``steps`` optimizer steps, the KL schedule keeping its shape:
        the KL-free start and the warm-up scale along with the run's length."""
        frac = steps / self.steps
        return dataclasses.replace(
            self,
            steps=steps,
            kl_free_steps=round(self.kl_free_steps * frac),
            kl_warmup_steps=round(self.kl_warmup_steps * frac),
        )

    def alpha_at(self, step: int) -> float:
        """KL weight of optimizer step ``step`` (0-based): 0, then a linear ramp, then alpha."""
        ramped = step + 1 - self.kl_free_steps
        if ramped <= 0:
            return 0.0
        return self.alpha * min(1.0, ramped / max(self.kl_warmup_steps, 1))


#: ``paper``: grid settings of Table A10 (batch 512 episodes ~ 16k steps, 64k steps);
#: ``quick``: fits the CPU; ``tiny``: tests.


def default_layer(n_layers: int) -> int:
    """The paper's insertion point: mid-depth, ``L // 2``."""
    return n_layers // 2


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, in order: equal digests = bit-identical weights."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def switch_counts(
    beta: np.ndarray, subgoal: np.ndarray, mask: np.ndarray, threshold: float = SWITCH_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Per episode: steps with ``beta_t >= threshold``, and true segments (label changes + 1)."""
    real = mask > 0
    switches = ((beta >= threshold) & real).sum(1)
    changes = (subgoal[:, 1:] != subgoal[:, :-1]) & real[:, 1:]
    return switches, changes.sum(1) + real[:, 0]


def charged_kl(
    mo: MetacontrollerOutput, mask: Float[Tensor, "batch pos"], rate: str = "step"
) -> Float[Tensor, ""]:
    """The rate term of the loss, per real step: the mean over real steps of
    ``KL(N(mu_t, Sigma_t) || N(0, I))`` (``rate="step"``), or of ``beta_t`` times it
    (``rate="switch"``).

    ``switch`` is the expected KL of the ELBO with a Bernoulli switch variable (paper E.1):
    when the switch holds, ``z_t = z_{t-1}`` exactly and the step costs nothing; when it
    fires, the new code costs its KL. With ``step`` every proposal is charged whether or not
    the switch uses it, so the rate does not price a switch. During training ``beta_t`` is
    the sampled (relaxed) gate, one sample of that expectation. On ant (issue 32) neither
    rate aligns the switch with the subgoal boundaries (docs/experiments-log.md).
    """
    if rate not in RATES:
        raise ValueError(f"rate={rate!r}; allowed: {', '.join(RATES)}")
    kl = mo.kl * mask
    if rate == "switch":
        kl = kl * mo.beta
    return kl.sum() / mask.sum().clamp(min=1.0)


@dataclass
class LossParts:
    """One batch's loss and its parts as tensors on the run's device; :meth:`stats` reads
    them back (a host sync: at log steps and in evaluations only)."""

    loss: torch.Tensor
    action_nll: torch.Tensor
    obs_nll: torch.Tensor
    kl: torch.Tensor
    beta: torch.Tensor
    """``[batch, pos]`` switch gates (detached)."""
    batch: Batch
    next_colour_nll: torch.Tensor | None = None
    """The base's next-colour cross-entropy (unweighted); ``None`` for a base without the
    head (:meth:`~irl_lens.models.base.ActionModel.auxiliary_loss`)."""

    def stats(self) -> dict[str, float]:
        """``action_nll``, ``obs_nll``, ``kl``, ``mean_beta``, ``switches`` and
        ``true_segments`` (per episode) as numbers, and ``next_colour_nll`` for a base with
        that head."""
        beta = self.beta.float().cpu().numpy()
        m = self.batch.mask.cpu().numpy()
        sw, true = switch_counts(beta, self.batch.subgoal.cpu().numpy(), m)
        extra = {} if self.next_colour_nll is None else {
            "next_colour_nll": float(self.next_colour_nll)}  # fmt: skip
        return {
            "action_nll": float(self.action_nll),
            "obs_nll": float(self.obs_nll),
            "kl": float(self.kl),
            "mean_beta": float((beta * m).sum() / max(m.sum(), 1.0)),
            "switches": float(sw.mean()),
            "true_segments": float(true.mean()),
            **extra,
        }


def _loss(
    model: ActionModel,
    mc: Metacontroller,
    layer: int,
    batch: Batch,
    cfg: DiscoverConfig,
    lam: float,
    generator: torch.Generator | None,
    sample: bool = True,
    alpha: float | None = None,
) -> LossParts:
    batch = batch.to(next(mc.parameters()).device)
    mask = batch.mask
    out, mo = run_with_metacontroller(
        model,
        mc,
        layer,
        batch.obs,
        mask,
        sample=sample,
        beta_override=1.0 if cfg.variant == "beta1" else None,
        generator=generator,
        e_embed=embedder_input(model, mc, batch.obs),
    )
    nll_a, nll_o = model.losses(out, batch.action, batch.next_obs, mask)
    # a base pretrained with a next-colour head (ant, issue 32) is scored on it too: the
    # controlled base's pretraining loss, so a code that carries the target pays off
    aux, ce = model.auxiliary_loss(out, batch.next_obs, mask)
    kl = charged_kl(mo, mask, cfg.rate)
    loss = nll_a + lam * nll_o + aux + (cfg.alpha if alpha is None else alpha) * kl
    has_head = model.model_cfg.next_colour_weight > 0
    return LossParts(loss, nll_a.detach(), nll_o.detach(), kl.detach(), mo.beta.detach(), batch,
                     ce.detach() if has_head else None)  # fmt: skip


def _val_batches(
    ds: TrajectoryDataset, episodes: np.ndarray, device: torch.device
) -> Iterator[tuple[Batch, float]]:
    """Held-out episodes in batches of about 64, each with its real-token count (the weight
    of its per-token means), for :func:`evaluate` and :func:`evaluate_uncontrolled`."""
    for chunk in np.array_split(episodes, max(1, len(episodes) // 64)):
        batch = make_batch(ds, chunk, device)
        yield batch, float(batch.mask.sum())


def evaluate(
    model: ActionModel,
    mc: Metacontroller,
    layer: int,
    ds: TrajectoryDataset,
    episodes: np.ndarray,
    cfg: DiscoverConfig,
    lam: float,
) -> dict[str, float]:
    """Validation metrics with the posterior mean (no latent noise, noiseless switch)."""
    if len(episodes) == 0:
        return {}
    tot: dict[str, float] = {}
    n_tok = 0.0
    with torch.no_grad():
        for batch, w in _val_batches(ds, episodes, next(mc.parameters()).device):
            stats = _loss(model, mc, layer, batch, cfg, lam, None, sample=False).stats()
            for k in ("action_nll", "kl", "mean_beta", "next_colour_nll"):
                if k in stats:
                    tot[k] = tot.get(k, 0.0) + stats[k] * w
            for k in ("switches", "true_segments"):
                tot[k] = tot.get(k, 0.0) + stats[k] * len(batch.episodes)
            n_tok += w
    n_ep = float(len(episodes))
    return {
        "val/action_nll": tot["action_nll"] / n_tok,
        "val/kl": tot["kl"] / n_tok,
        "val/mean_beta": tot["mean_beta"] / n_tok,
        "val/switches_per_episode": tot["switches"] / n_ep,
        "val/true_segments_per_episode": tot["true_segments"] / n_ep,
        **({"val/next_colour_nll": tot["next_colour_nll"] / n_tok}
           if "next_colour_nll" in tot else {}),
    }  # fmt: skip


def evaluate_uncontrolled(
    model: ActionModel, ds: TrajectoryDataset, episodes: np.ndarray
) -> dict[str, float]:
    """The same validation numbers for the base model alone, on the same episodes: what
    the metacontroller's distortion is read against. A metacontroller whose codes carry
    nothing useful leaves the action NLL where the base has it (or makes it worse); one
    whose codes carry the subgoal lowers it, and a next-colour head's cross-entropy with it."""
    if len(episodes) == 0:
        return {}
    tot: dict[str, float] = {"action_nll": 0.0, "next_colour_nll": 0.0}
    n_tok = 0.0
    with torch.no_grad():
        for batch, w in _val_batches(ds, episodes, next(model.parameters()).device):
            out = model(batch.obs)
            nll_a, _ = model.losses(out, batch.action, batch.next_obs, batch.mask)
            _, ce = model.auxiliary_loss(out, batch.next_obs, batch.mask)
            tot["action_nll"] += float(nll_a) * w
            tot["next_colour_nll"] += float(ce) * w
            n_tok += w
    has_head = model.model_cfg.next_colour_weight > 0
    return {
        "val/base_action_nll": tot["action_nll"] / n_tok,
        **({"val/base_next_colour_nll": tot["next_colour_nll"] / n_tok} if has_head else {}),
    }


@dataclass
class DiscoverResult:
    out: Path
    steps: int
    seconds: float
    summary: dict


def _split(ds: TrajectoryDataset, n_val: int) -> tuple[np.ndarray, np.ndarray]:
    n_val = min(n_val, ds.n_episodes // 5)
    idx = np.arange(ds.n_episodes)
    return idx[: ds.n_episodes - n_val], idx[ds.n_episodes - n_val :]


def discover(
    run: str | Path,
    ds: TrajectoryDataset,
    out: str | Path,
    cfg: DiscoverConfig,
    *,
    layer: int | None = None,
    mc_cfg: MetacontrollerConfig | None = None,
    data_path: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> DiscoverResult:
    """Train a metacontroller on the frozen (or co-trained) base model of ``run`` (the
    forward pass in ``precision``: :func:`irl_lens.train.loop.autocast`)."""
    out = Path(out)
    if ds.meta.get("action_kind") != "discrete" and ds.meta.get("obs_kind") == "grid":
        raise ValueError("discover: the gridworld dataset must have discrete actions")
    if ds.meta.get("split") != "clean":
        logger.warning("training on a %r dataset; the paper uses clean data", ds.meta.get("split"))
    autocast(device, precision)  # an unknown precision fails before anything is written
    fast_matmuls(device)
    base = load_base_model(run)
    n_layers = base.cfg.n_layers
    layer = default_layer(n_layers) if layer is None else check_layer(layer, n_layers)
    if cfg.variant == "cotrain" and not cfg.cotrain_from_pretrained:
        base = build_model(base.model_cfg, seed=cfg.seed + 1)  # from scratch, same shape
    base = base.to(device, print_details=False)
    mc_cfg = mc_cfg or MetacontrollerConfig(d_model=base.cfg.d_model)
    if mc_cfg.d_model != base.cfg.d_model:
        raise ValueError(
            f"metacontroller d_model={mc_cfg.d_model} != base d_model={base.cfg.d_model}"
        )
    if mc_cfg.embed_layer is not None:
        check_embed_layer(mc_cfg.embed_layer, n_layers)  # before anything is written
    mc = build_metacontroller(mc_cfg, seed=cfg.seed).to(device)
    lam = base.model_cfg.obs_loss_weight if cfg.obs_loss_weight is None else cfg.obs_loss_weight
    trainable = list(mc.parameters()) + (
        list(base.parameters()) if cfg.variant == "cotrain" else []
    )
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_idx, val_idx = _split(ds, cfg.val_episodes)
    if len(train_idx) == 0:
        raise ValueError(f"dataset has {ds.n_episodes} episodes; discovery needs more")
    train_ds = ds.subset(train_idx)
    config = {
        "kind": KIND,
        "version": runs.RUN_VERSION,
        "base_run": str(run),
        "base_run_ref": runs.run_ref(run, out),
        "data": data_path,
        "data_sha256": ds.fingerprint(),
        "layer": layer,
        "metacontroller": mc_cfg.to_dict(),
        "train": dataclasses.asdict(cfg),
        "precision": precision,
    }
    step, epoch, batch_in_epoch = 0, 0, 0
    seconds_before = 0.0  # training time of the legs before a --resume
    # the base is checked by its weights' hash (base_run_ref), not by the path typed; the
    # precision, like the device, may change between a run and its resumption
    same = [k for k in config if k not in ("base_run", "base_run_ref", "data", "precision")]
    ckpt = runs.start_run(out, config, resume=resume, compare=same)
    if resume:
        saved_sha = (runs.read_json(out / "config.json").get("base_run_ref") or {}).get("sha256")
        if saved_sha not in (None, config["base_run_ref"]["sha256"]):
            raise runs.RunError(f"--resume: {out} was trained on another base model than {run}")
    if ckpt is not None:
        runs.load_weights(mc, ckpt / "model.safetensors")
        state = runs.load_trainer_state(
            ckpt, ("optimizer", "step", "epoch", "batch_in_epoch", "generator")
        )
        if cfg.variant == "cotrain":
            runs.load_weights(base, ckpt / "base.safetensors")
        opt.load_state_dict(state["optimizer"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        generator.set_state(state["generator"])
        seconds_before = float(state.get("train_seconds", 0.0))
        logger.info("resumed %s at step %d", out, step)
    runs.truncate_metrics(out / "metrics.jsonl", "step", step)
    base_digest = weights_digest(base)
    metrics_path = out / "metrics.jsonl"
    end = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"discover ({cfg.variant})", unit="step",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    t0 = time.perf_counter()
    freeze = frozen(base) if cfg.variant != "cotrain" else nullcontext()
    non_finite = FirstNonFinite(device, "discover")
    mc.train()
    with freeze, guarded(bar, step) as guard:
        while step < end:
            order = bucketed_batches(
                train_ds.lengths, cfg.tokens_per_batch, np.random.default_rng([cfg.seed, epoch])
            )
            while batch_in_epoch < len(order) and step < end:
                batch = make_batch(train_ds, order[batch_in_epoch], device)
                alpha = cfg.alpha_at(step)
                with autocast(device, precision):
                    parts = _loss(base, mc, layer, batch, cfg, lam, generator, alpha=alpha)
                opt.zero_grad(set_to_none=True)
                parts.loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
                opt.step()
                non_finite.record(step + 1, parts.action_nll + parts.kl)
                step += 1
                guard.at(step)
                batch_in_epoch += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == end:
                    non_finite.check(guard.saved_at)
                    stats = parts.stats()
                    rec = {
                        "step": step,
                        "train/loss": parts.loss.item(),
                        "train/action_nll": stats["action_nll"],
                        "train/obs_nll": stats["obs_nll"],
                        "train/kl": stats["kl"],
                        "train/mean_beta": stats["mean_beta"],
                        "train/switches_per_episode": stats["switches"],
                        "train/true_segments_per_episode": stats["true_segments"],
                    }
                    if "next_colour_nll" in stats:
                        rec["train/next_colour_nll"] = stats["next_colour_nll"]
                    runs.append_metrics(metrics_path, rec)
                    sw = f"{stats['switches']:.1f}/{stats['true_segments']:.1f}"
                    bar.set_postfix(nll=f"{stats['action_nll']:.3f}", kl=f"{stats['kl']:.2f}",
                                    sw=sw)  # fmt: skip
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    mc.eval()
                    ev = evaluate(base, mc, layer, ds, val_idx, cfg, lam)
                    mc.train()
                    runs.append_metrics(metrics_path, {"step": step, **ev})
                    logger.info("step %d: %s", step, {k: round(v, 4) for k, v in ev.items()})
                if guard.checkpoint_due(step, cfg.checkpoint_every, cfg.steps):
                    non_finite.check(guard.saved_at)  # never a checkpoint of NaN weights
                    state = {
                        "optimizer": opt.state_dict(),
                        "step": step,
                        "epoch": epoch,
                        "batch_in_epoch": batch_in_epoch,
                        "generator": generator.get_state(),
                        "train_seconds": seconds_before + time.perf_counter() - t0,
                    }
                    ckpt = runs.save_checkpoint(out, step, mc, state)
                    if cfg.variant == "cotrain":
                        runs.save_weights(base, ckpt / "base.safetensors")
                    guard.saved(step)
            if batch_in_epoch >= len(order):
                epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    seconds = seconds_before + time.perf_counter() - t0  # every leg's, as pretrain counts it
    if cfg.variant != "cotrain" and weights_digest(base) != base_digest:
        raise RuntimeError("the frozen base model's weights changed during discovery (bug)")
    if step < cfg.steps:
        return DiscoverResult(out, step, seconds, {})
    non_finite.check(guard.saved_at)
    runs.save_weights(mc, out / "metacontroller.safetensors")
    if cfg.variant == "cotrain":
        runs.save_weights(base, out / "base.safetensors")
    mc.eval()
    final = evaluate(base, mc, layer, ds, val_idx, cfg, lam)
    final |= evaluate_uncontrolled(base, ds, val_idx)
    summary = {f"discover/{k.split('/', 1)[1]}": v for k, v in final.items()}
    summary |= {
        "discover/steps": float(step),
        "discover/train_seconds": seconds,
        "discover/base_unchanged": float(weights_digest(base) == base_digest),
        "discover/layer": float(layer),
        "discover/alpha": cfg.alpha,
    }
    runs.write_json(out / "summary.json", summary)
    return DiscoverResult(out, step, seconds, summary)


def prior_rollouts(
    path: str | Path,
    *,
    n_episodes: int = 1000,
    task=None,
    threshold: float = SWITCH_THRESHOLD,
    seed: int = 0,
    device: str = "cpu",
    loaded: tuple | None = None,
) -> dict:
    """Closed-loop rollouts drawing ``z ~ N(0, I)`` whenever ``beta`` crosses ``threshold``.

    ``task=None`` samples the pretraining tasks. Returns success, switches per episode
    (``t >= 1``) and mean length. ``loaded``: ``(base, mc, config)`` of ``path`` if at hand.
    """

    base, mc, config = loaded or load_metacontroller(path, device=device)
    kit = env_kit(base, int(config["layer"]))
    generator = torch.Generator().manual_seed(seed)

    def driver() -> MetacontrollerDriver:  # one per batch of episodes, sharing the generator
        return MetacontrollerDriver(
            mc, threshold=threshold, generator=generator, max_steps=kit.max_steps,
            always_switch=config["train"]["variant"] == "beta1",
        )  # fmt: skip

    with torch.no_grad():
        batches = run_batches(
            kit,
            n_episodes,
            task=task,
            seed=seed,
            stream=5000,
            make_fn=driver,
            generator=torch.Generator().manual_seed(seed),
        )
    success = np.concatenate([ro.success for ro, _ in batches])
    switches = np.concatenate([fn.switched[:, 1:].sum(1) for _, fn in batches])
    length = np.concatenate([ro.length for ro, _ in batches])
    return {
        "success": float(success.mean()),
        "switches_per_episode": float(switches.mean()),
        "mean_length": float(length.mean()),
        "n_episodes": float(n_episodes),
    }


def fit_metacontroller(
    model: HookedRootModule,
    tokens: Int[Tensor, "batch pos"],
    layer: int,
    *,
    cfg: DiscoverConfig | None = None,
    mc_cfg: MetacontrollerConfig | None = None,
    mask: Float[Tensor, "batch pos"] | None = None,
    progress: bool = False,
) -> Metacontroller:
    """Discover temporal abstractions in a user's own model: train a metacontroller on a
    frozen TransformerLens model of token sequences (not only on our action models).

    The loss is the paper's ELBO (eq. 3) for next-token prediction: the cross-entropy of
    ``model(tokens)`` at positions ``0..pos-2`` against ``tokens[:, 1:]`` with the
    metacontroller writing ``e + U(z) e`` into layer ``layer``, plus ``alpha`` times the
    mean per-step KL of the codes to ``N(0, I)`` (:func:`charged_kl`). ``cfg`` gives ``steps``,
    ``lr``, ``weight_decay``, ``alpha`` (with its KL-free start and warm-up), ``rate``,
    ``grad_clip``, ``tokens_per_batch`` and ``seed`` (defaults: :class:`DiscoverConfig` with
    200 steps).
    The model's weights are not changed (checked).

    Example::

        mc = fit_metacontroller(my_model, tokens, layer=1)
        save_metacontroller(mc, "runs/my-mc", layer=1)
        loaded = load_metacontroller("runs/my-mc", base=my_model)
    """
    cfg = cfg or DiscoverConfig(steps=200, lr=3e-3)
    n_layers = n_layers_of(model)
    layer = check_layer(layer, n_layers)
    device = tokens.device
    width = model.cfg.d_model
    mc_cfg = mc_cfg or MetacontrollerConfig(d_model=width)
    if mc_cfg.d_model != width:
        raise ValueError(f"MetacontrollerConfig.d_model={mc_cfg.d_model} != the model's {width}")
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens: expected [batch, pos >= 2], got {tuple(tokens.shape)}")
    mask = torch.ones(tokens.shape, device=device) if mask is None else mask.float()
    mc = build_metacontroller(mc_cfg, seed=cfg.seed).to(device)
    opt = torch.optim.AdamW(mc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    per_batch = max(1, cfg.tokens_per_batch // tokens.shape[1])
    digest = weights_digest(model)
    model.eval()
    mc.train()
    with frozen(model):
        for step in tqdm(range(cfg.steps), desc="fit metacontroller", disable=not progress):
            rows = torch.randint(
                len(tokens), (per_batch,), generator=generator, device=device
            )  # [batch]
            m = mask[rows]
            logits, mo = run_with_metacontroller(
                model, mc, layer, tokens[rows], m, generator=generator,
                e_embed=embedder_input(model, mc, tokens[rows]),
            )  # fmt: skip
            nll = F.cross_entropy(
                logits[:, :-1].flatten(0, 1), tokens[rows][:, 1:].flatten(), reduction="none"
            )
            keep = (m[:, 1:] * m[:, :-1]).flatten()
            nll = (nll * keep).sum() / keep.sum().clamp(min=1.0)
            loss = nll + cfg.alpha_at(step) * charged_kl(mo, m, cfg.rate)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(mc.parameters(), cfg.grad_clip)
            opt.step()
    if weights_digest(model) != digest:
        raise RuntimeError("fit_metacontroller changed the frozen model's weights (bug)")
    return mc.eval()
