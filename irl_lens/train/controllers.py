"""Supervised controllers: one linear controller per subgoal, picked by the true label (paper C.3).

For a layer ``l`` a :class:`~irl_lens.models.controller.ControllerBank` holds one
controller ``U_g`` per abstract subgoal ``g``. On clean expert data, at every step the
ground-truth label ``g_t`` picks ``U_{g_t}``, the frozen base model reads
``e_t + U_{g_t} e_t`` at layer ``l`` (through :func:`irl_lens.hooks.intervene`), and only
the controllers are trained, on the expert's action NLL:

    L = sum_t -ln p(a_t | o_1:t, e_t,l <- e_t,l + U_{g_t} e_t,l)

(the paper's metacontroller loss with ``z_t = onehot(g_t)`` and ``beta`` forced to 1; grid:
low-rank 16, AdamW lr 1e-3, 3200 steps). Evaluation then runs the controllers in the
order a task asks for in the rollout engine, switching on the env's report that the
current subgoal is done (:class:`irl_lens.rollout.switchers.GroundTruthSwitcher`); see
:mod:`analyses.controllability`.

A controllers folder (``kind = "supervised_controllers"``) holds ``config.json`` (base run,
dataset, layers, training settings), ``layer_{l}.safetensors`` per layer and
``metrics.jsonl``; :func:`load_controllers` rebuilds everything.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from irl_lens import runs
from irl_lens.data.dataset import Batch, TrajectoryDataset, iterate_batches, make_batch
from irl_lens.envs.pinpad import N_SUBGOALS
from irl_lens.hooks import check_layer, intervene
from irl_lens.models.base import ActionModel, load_base_model
from irl_lens.models.controller import ControllerBank, ControllerConfig, build_controller_bank
from irl_lens.rollout.kit import env_kit
from irl_lens.rollout.relabel import RelabelledEpisodes, pad_steps, relabelled_episodes

logger = logging.getLogger(__name__)

KIND = "supervised_controllers"


@dataclass
class ControllerTrainConfig:
    """How the supervised controllers of one layer are trained."""

    rank: int | None = 16
    """Rank of each ``U_g = B A``; ``None`` for full ``[d_model, d_model]`` matrices."""
    hypernetwork: bool = False
    """``U_g`` decoded from ``onehot(g)`` by a metacontroller-shaped hypernetwork
    (:attr:`~irl_lens.models.controller.ControllerConfig.hypernetwork`)."""
    steps: int = 3200
    """AdamW steps per layer (paper: 3200)."""
    lr: float = 1e-3
    """AdamW learning rate (paper: 1e-3 for the grid)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    tokens_per_batch: int = 4096
    """Padded steps per batch (length-bucketed episodes)."""
    val_episodes: int = 200
    """Clean episodes held out for the NLL comparison (controlled vs base)."""
    log_every: int = 25
    """Append a ``metrics.jsonl`` record every this many steps."""
    seed: int = 0
    """Seeds the controllers' initialisation and the data order."""
    dagger_rounds: int = 0
    """Rounds of expert relabelling after the clean steps (0: none, the paper's controllers).
    Each round rolls the controlled base out on the pretraining tasks, labels every visited
    state with the clean expert's action (:mod:`irl_lens.rollout.relabel`), adds those
    episodes to a pool, and trains ``dagger_steps`` more steps alternating a clean batch and
    a pool batch (:func:`relabel_loss`)."""
    dagger_episodes: int = 500
    """Closed-loop episodes per relabelling round."""
    dagger_steps: int = 300
    """AdamW steps per relabelling round (half on clean batches, half on the pool)."""
    dagger_lr: float | None = None
    """Learning rate in the relabelling rounds (``None``: ``lr``)."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        for name in ("steps", "tokens_per_batch", "log_every", "dagger_episodes", "dagger_steps"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"ControllerTrainConfig.{name}={getattr(self, name)!r} must be >= 1"
                )
        if not self.lr > 0:
            raise ValueError(f"ControllerTrainConfig.lr={self.lr!r} must be > 0")
        if self.weight_decay < 0 or self.val_episodes < 0 or self.dagger_rounds < 0:
            raise ValueError(
                "ControllerTrainConfig.weight_decay, val_episodes and dagger_rounds must be >= 0"
            )
        if self.dagger_lr is not None and not self.dagger_lr > 0:
            raise ValueError(f"ControllerTrainConfig.dagger_lr={self.dagger_lr!r} must be > 0")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"ControllerTrainConfig.rank={self.rank!r}: use >= 1 or None (full)")


#: Named settings: ``paper`` follows C.3; ``quick`` fits the CPU (fewer, larger steps).


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Turn off gradients of every parameter of ``model`` inside the block, then restore."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def controlled_nll(
    model: ActionModel, bank: ControllerBank | None, layer: int, batch: Batch
) -> torch.Tensor:
    """Mean action NLL over labelled steps, with ``U_{g_t}`` at ``layer`` (``bank=None``: base)."""
    device = next(model.parameters()).device
    labels = batch.subgoal.to(device)  # [batch, pos], -1 on padding
    weight = batch.mask.to(device) * (labels >= 0)
    if bank is None:
        out = model(batch.obs.to(device))
    else:
        with intervene(model, layer, bank.select(labels)):
            out = model(batch.obs.to(device))
    params = model.split(out).action_params  # [batch, pos, n_action_outputs]
    actions = batch.action.to(device)
    if model.model_cfg.action_kind == "continuous":  # ant: Gaussian NLL of the torques
        nll = -model.action_distribution(params).log_prob(actions)
    else:
        nll = F.cross_entropy(params.flatten(0, 1), actions.flatten(), reduction="none").view_as(
            weight
        )
    return (nll * weight).sum() / weight.sum().clamp(min=1.0)


def relabel_loss(
    model: ActionModel, bank: ControllerBank, layer: int, batch: Batch, scale: float = 1.0
) -> torch.Tensor:
    """The controlled model's loss on expert-relabelled steps (:mod:`irl_lens.rollout.relabel`):
    discrete actions, the action NLL (:func:`controlled_nll`); continuous actions, the
    Gaussian NLL of the expert's action at one fixed standard deviation ``scale`` for every
    step and dimension (up to a constant: the squared error of the head's mean over
    ``2 scale^2``, summed over action dimensions, averaged over labelled steps).

    Why a fixed scale: off the expert's path the head is confidently wrong, and with its own
    per-step scale a few such steps dominate the NLL's gradient (on the quick ant base one
    round on the full NLL took success on 0-1-2-3 from 0.144 to 0.032). With ``scale`` the
    base's mean standard deviation on clean data (:func:`mean_action_std`) a relabelled
    step weighs about what a clean step weighs (docs/experiments-log.md, thirteenth
    session)."""
    if model.model_cfg.action_kind != "continuous":
        return controlled_nll(model, bank, layer, batch)
    device = next(model.parameters()).device
    labels = batch.subgoal.to(device)
    weight = batch.mask.to(device) * (labels >= 0)
    with intervene(model, layer, bank.select(labels)):
        params = model.split(model(batch.obs.to(device))).action_params
    error = ((model.action_mean(params) - batch.action.to(device)) ** 2).sum(-1)
    return (error * weight).sum() / weight.sum().clamp(min=1.0) / (2 * scale**2)


@torch.no_grad()
def mean_action_std(model: ActionModel, batch: Batch) -> float:
    """The base model's mean action standard deviation over a batch's labelled steps
    (continuous actions; the scale :func:`relabel_loss` holds fixed)."""
    device = next(model.parameters()).device
    weight = (batch.mask.to(device) > 0) & (batch.subgoal.to(device) >= 0)
    params = model.split(model(batch.obs.to(device))).action_params
    std = model.action_distribution(params).stddev  # [batch, pos, n_actions]
    return float(std[weight].mean())


class RelabelledPool:
    """Every round's relabelled episodes (DAgger's aggregate), drawn from as batches."""

    def __init__(self) -> None:
        self.rounds: list[RelabelledEpisodes] = []

    def add(self, episodes: RelabelledEpisodes) -> None:
        self.rounds.append(episodes)

    @property
    def n_episodes(self) -> int:
        return sum(r.n_episodes for r in self.rounds)

    def batch(self, tokens_per_batch: int, rng: np.random.Generator) -> Batch:
        """Episodes drawn uniformly from the pool until about ``tokens_per_batch`` real
        steps, as a :class:`~irl_lens.data.dataset.Batch` (``action``: the expert labels;
        ``next_obs`` and ``target_colour`` are not kept and hold zeros / the subgoal)."""
        if not self.rounds:
            raise ValueError("the pool is empty: add relabelled episodes first")
        sizes = np.array([r.n_episodes for r in self.rounds])
        lengths = torch.cat([r.mask.sum(1) for r in self.rounds]).numpy()
        n = int(np.clip(round(tokens_per_batch / max(lengths.mean(), 1.0)), 1, sizes.sum()))
        picks = np.sort(rng.choice(sizes.sum(), size=n, replace=False))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        which = np.searchsorted(starts, picks, side="right") - 1
        width = int(lengths[picks].max())
        rows = [(self.rounds[w], int(i - starts[w])) for w, i in zip(which, picks, strict=True)]

        def take(field: str, fill: float = 0) -> torch.Tensor:
            steps = [pad_steps(getattr(r, field)[i], width, fill, 0) for r, i in rows]
            return torch.stack(steps)

        subgoal = take("subgoal", fill=-1)
        return Batch(obs=take("obs"), action=take("label"), next_obs=torch.zeros(0),
                     subgoal=subgoal, target_colour=subgoal, mask=take("mask"),
                     episodes=picks)  # fmt: skip


RELABEL_STREAM = 5000
"""Env streams of the relabelling rounds' episodes (round ``r``: ``5000 + 100 r`` on)."""


@dataclass
class LayerResult:
    """One trained layer."""

    layer: int
    bank: ControllerBank
    final_loss: float
    val_nll: float
    base_val_nll: float
    seconds: float


def bank_config(model: ActionModel, cfg: ControllerTrainConfig) -> ControllerConfig:
    """The :class:`ControllerConfig` of one layer's bank: one controller per subgoal."""
    return ControllerConfig(
        model.cfg.d_model, N_SUBGOALS, rank=cfg.rank, hypernetwork=cfg.hypernetwork
    )


def train_layer(
    model: ActionModel,
    ds: TrajectoryDataset,
    layer: int,
    cfg: ControllerTrainConfig,
    *,
    train_episodes: np.ndarray,
    val_episodes: np.ndarray,
    metrics_path: Path | None = None,
    progress: bool = True,
) -> LayerResult:
    """Train one controller per subgoal at ``layer`` with the base model frozen."""
    layer = check_layer(layer, model.cfg.n_layers)
    device = next(model.parameters()).device
    bank = build_controller_bank(bank_config(model, cfg), seed=cfg.seed + layer).to(device)
    opt = torch.optim.AdamW(bank.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_ds = ds.subset(train_episodes)
    stream = iterate_batches(train_ds, cfg.tokens_per_batch, seed=cfg.seed, device=device)
    t0 = time.perf_counter()
    loss_ema = float("nan")
    total = cfg.steps + cfg.dagger_rounds * cfg.dagger_steps
    bar = tqdm(
        total=total,
        desc=f"controllers l={layer}",
        unit="step",
        disable=not progress,
        leave=False,
    )

    def log(record: dict) -> None:
        if metrics_path is not None:
            runs.append_metrics(metrics_path, {"layer": layer, **record})

    with frozen(model):
        for step in range(1, cfg.steps + 1):
            _, batch = next(stream)
            value = _step(opt, bar, controlled_nll(model, bank, layer, batch))
            loss_ema = value if loss_ema != loss_ema else 0.9 * loss_ema + 0.1 * value
            if step % cfg.log_every == 0 or step == cfg.steps:
                bar.set_postfix(nll=f"{loss_ema:.3f}")
                log({"step": step, "train/action_nll": value})
        if cfg.dagger_rounds:
            _relabel_rounds(model, bank, layer, cfg, ds, stream, bar, log)
        bar.close()
        with torch.no_grad():
            val_nll, base_nll = _val_nll(model, bank, layer, ds, val_episodes, cfg)
    seconds = time.perf_counter() - t0
    if metrics_path is not None:
        runs.append_metrics(
            metrics_path,
            {
                "layer": layer,
                "step": cfg.steps,
                "val/action_nll": val_nll,
                "val/base_action_nll": base_nll,
            },
        )
    logger.info("layer %d: val NLL %.4f (base %.4f) in %.0fs", layer, val_nll, base_nll, seconds)
    return LayerResult(layer, bank.eval(), loss_ema, val_nll, base_nll, seconds)


def _relabel_rounds(model, bank, layer, cfg, ds, stream, bar, log) -> None:
    """``cfg.dagger_rounds`` rounds of expert relabelling (see ``ControllerTrainConfig``).
    Each round refits on the grown aggregate with a fresh AdamW (its moments restart with
    the data they normalise)."""
    kit = env_kit(model, layer)
    args = {} if kit.name == "ant" else {"tie_break": ds.meta.get("tie_break", "random"),
                                         "seed": cfg.seed}  # fmt: skip
    lr = cfg.lr if cfg.dagger_lr is None else cfg.dagger_lr
    device = next(model.parameters()).device
    scale = 1.0
    if model.model_cfg.action_kind == "continuous":
        scale = mean_action_std(model, next(stream)[1])
        log({"step": cfg.steps, "dagger/action_std": scale})
    pool, rng = RelabelledPool(), np.random.default_rng([cfg.seed, layer, RELABEL_STREAM])
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + layer)
    step = cfg.steps
    for r in range(1, cfg.dagger_rounds + 1):
        bar.set_postfix(round=f"{r}/{cfg.dagger_rounds}: rollouts")
        bank.eval()
        episodes = relabelled_episodes(kit, lambda: kit.switcher(bank.select),
                                       cfg.dagger_episodes, seed=cfg.seed,
                                       stream=RELABEL_STREAM + 100 * r, generator=generator,
                                       labeller_args=args)  # fmt: skip
        bank.train()
        pool.add(episodes)
        opt = torch.optim.AdamW(bank.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        log({"step": step, "dagger/round": r, "dagger/pretrain_success": episodes.success,
             "dagger/pool_episodes": pool.n_episodes})  # fmt: skip
        for k in range(cfg.dagger_steps):
            step += 1
            if k % 2 == 0:
                _, batch = next(stream)
                value = _step(opt, bar, controlled_nll(model, bank, layer, batch))
                record = {"train/action_nll": value}
            else:
                batch = pool.batch(cfg.tokens_per_batch, rng).to(device)
                value = _step(opt, bar, relabel_loss(model, bank, layer, batch, scale))
                record = {"train/relabel_loss": value}
            if k % cfg.log_every < 2 or k >= cfg.dagger_steps - 2:
                bar.set_postfix(round=f"{r}/{cfg.dagger_rounds}", loss=f"{value:.3f}")
                log({"step": step, "dagger/round": r, **record})


def _step(opt: torch.optim.Optimizer, bar, loss: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    bar.update(1)
    return loss.item()


def _val_nll(model, bank, layer, ds, episodes, cfg) -> tuple[float, float]:
    if len(episodes) == 0:
        return float("nan"), float("nan")
    tot_c = tot_b = n = 0.0
    for chunk in np.array_split(episodes, max(1, len(episodes) // 64)):
        batch = make_batch(ds, chunk)
        w = float(((batch.mask > 0) & (batch.subgoal >= 0)).sum())
        tot_c += controlled_nll(model, bank, layer, batch).item() * w
        tot_b += controlled_nll(model, None, layer, batch).item() * w
        n += w
    return tot_c / n, tot_b / n


def train_supervised_controllers(
    run: str | Path,
    ds: TrajectoryDataset,
    out: str | Path,
    layers: list[int],
    cfg: ControllerTrainConfig,
    *,
    data_path: str | None = None,
    checkpoint: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> list[LayerResult]:
    """Train controllers at each of ``layers`` on ``ds``; write the controllers folder ``out``.

    ``checkpoint`` (a folder of ``run``'s checkpoints) controls that earlier base model
    instead of the final one (controllability by base training step)."""
    out = Path(out)
    if ds.meta.get("split") != "clean":
        logger.warning(
            "training controllers on a %r dataset; the paper uses clean (eps=0) data",
            ds.meta.get("split"),
        )
    model = load_base_model(run, checkpoint).to(device, print_details=False)
    layers = [check_layer(layer, model.cfg.n_layers) for layer in layers]
    if not layers:
        raise ValueError("layers: give at least one layer")
    runs.check_output(out, KIND, exists_hint="choose a new --out (nothing was changed)")
    n_val = min(cfg.val_episodes, ds.n_episodes // 5)
    idx = np.arange(ds.n_episodes)
    train_eps, val_eps = idx[: ds.n_episodes - n_val], idx[ds.n_episodes - n_val :]
    if len(train_eps) == 0:
        raise ValueError(f"dataset has {ds.n_episodes} episodes; controllers need more")
    out.mkdir(parents=True, exist_ok=True)
    runs.write_json(
        out / "config.json",
        {
            "kind": KIND,
            "version": runs.RUN_VERSION,
            "base_run": str(run),
            "base_run_ref": runs.run_ref(run, out),
            "base_checkpoint": None if checkpoint is None else Path(checkpoint).name,
            "data": data_path,
            "layers": layers,
            "train": dataclasses.asdict(cfg),
            "controller": bank_config(model, cfg).to_dict(),
        },
    )
    results = []
    for layer in layers:
        res = train_layer(
            model,
            ds,
            layer,
            cfg,
            train_episodes=train_eps,
            val_episodes=val_eps,
            metrics_path=out / "metrics.jsonl",
            progress=progress,
        )
        runs.save_weights(res.bank, out / f"layer_{layer}.safetensors")
        results.append(res)
    return results


def controllers_config(path: str | Path) -> dict:
    """A controllers folder's ``config.json`` (checked to be one), without loading weights."""
    config = runs.read_json(Path(path) / "config.json", "controllers config")
    if config.get("kind") != KIND:
        raise runs.RunError(f"{path} is a {config.get('kind')!r} folder, not {KIND!r}")
    return config


def load_controllers(
    path: str | Path, device: str = "cpu", wanted_layers: Sequence[int] | None = None
) -> tuple[ActionModel, dict[int, ControllerBank], dict]:
    """Rebuild ``(base model, {layer: bank}, config)`` from a controllers folder.

    ``wanted_layers`` loads only those layers' banks (default: every layer the folder was
    asked to train), so the layers an interrupted run finished can still be evaluated."""
    path = Path(path)
    config = controllers_config(path)
    try:
        ccfg = ControllerConfig.from_dict(config["controller"])
        layers = [int(v) for v in config["layers"]]
        base_run = runs.resolve_ref(config, "base_run", path)
    except (KeyError, TypeError, ValueError) as e:
        raise runs.RunError(f"{path}/config.json: bad controllers config ({e})") from None
    if not Path(base_run).is_dir() and (path.parent / "model.safetensors").is_file():
        base_run = path.parent  # the default layout RUN/controllers, moved with its run
    checkpoint = config.get("base_checkpoint")
    if checkpoint is not None:
        checkpoint = runs.checkpoint_at(Path(base_run), runs.checkpoint_step(checkpoint))
    model = load_base_model(base_run, checkpoint).to(device, print_details=False)
    wanted = layers if wanted_layers is None else [int(v) for v in wanted_layers]
    unknown = [layer for layer in wanted if layer not in layers]
    if unknown:
        raise runs.RunError(f"{path} has no controllers for layers {unknown} (it has {layers})")
    saved = [layer for layer in layers if (path / f"layer_{layer}.safetensors").is_file()]
    unfinished = [layer for layer in wanted if layer not in saved]
    if unfinished:
        raise runs.RunError(
            f"{path}: the controllers of layers {unfinished} were never saved (an interrupted "
            f"run?); layers with weights: {saved}"
        )
    banks = {}
    for layer in wanted:
        bank = ControllerBank(ccfg)
        runs.load_weights(bank, path / f"layer_{layer}.safetensors")
        banks[layer] = bank.to(device).eval()
    return model, banks, config
