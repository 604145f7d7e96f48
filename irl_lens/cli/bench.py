"""``irl-lens bench``: throughput of the pieces that bound every experiment, in one run.

Reported (all measured in the same process, so ratios compare like with like):

* ``env_steps_per_s``: :class:`~irl_lens.envs.gridworld_batch.BatchedGridPinpad` ``step`` with
  4096 envs and random actions.
* ``data_episodes_per_s``: expert data generation (batched env + DP expert), the same
  code path as ``irl-lens data``.
* ``pretrain_tokens_per_s``: full optimizer steps of the quick-preset base model on real
  length-bucketed batches.
* ``matmul_bound_tokens_per_s``: tokens/s the same training step would reach if it did
  nothing but its matrix multiplies (forward and backward, at the exact shapes the model
  uses, attention included), at the rate this machine achieves for them, timed here.
  ``pretrain_matmul_fraction`` = ``pretrain_tokens_per_s / matmul_bound_tokens_per_s``.
* ``peak_gflops``: a large square GEMM, for reference; ``pretrain_peak_fraction`` relates
  the model's matmul FLOPs/s to it.
* ``ant_env_steps_per_s``: :class:`~irl_lens.envs.ant_batch.BatchedAntPinpad` with 64 envs and
  random torques (MuJoCo through ``mujoco.rollout``, one thread per core), finished
  episodes restarted in place; ``ant_env_steps_per_s_single`` is the one-env Gymnasium
  :class:`~irl_lens.envs.ant.AntPinpadEnv` for comparison.
* ``ant_data_episodes_per_s``: ``irl-lens data ant --split clean`` with the shipped expert
  (256 envs; expert MLP inference included).
* ``ant_engine_steps_per_s``: the ant rollout engine (:mod:`irl_lens.rollout.ant`) with a
  random quick-size ant base model, 256 envs on the post task, rank-16 controllers picked
  by the target colour at layer 2, the first 100 steps of each episode; env steps/s, and
  ``ant_engine_env_fraction`` = that over ``ant_env_steps_per_s`` (the model's share of
  the time is what is left).
* ``ssm_scan_{shape}_loop_ms`` / ``_doubling_ms`` / ``_doubling_vs_loop``: the RG-LRU
  recurrence (:func:`~irl_lens.models.ssm.linear_scan`), forward + backward, as the CPU
  runs it (a loop over positions) and as CUDA does (a doubling scan), at the internal-RL
  policy's shape (1024 episodes x 100 steps x 64) and a Hawk ant base's (64 x 500 x 256).
"""

from __future__ import annotations

import logging
import platform
import time

import numpy as np
import torch

from irl_lens import presets
from irl_lens.data.dataset import bucketed_batches, make_batch
from irl_lens.data.generate import generate_gridworld
from irl_lens.data.generate_ant import generate_ant
from irl_lens.envs.ant import AntPinpadEnv
from irl_lens.envs.ant_batch import BatchedAntPinpad
from irl_lens.envs.ant_layout import ANT_MAX_STEPS, ANT_OBS_DIM
from irl_lens.envs.expert import benchmark as env_benchmark
from irl_lens.envs.pinpad import ANT_N_COLOURS, N_SUBGOALS, parse_task
from irl_lens.models.ant_expert import SHIPPED_EXPERT
from irl_lens.models.base import ActionModel, BaseModelConfig, build_model, load_base_model
from irl_lens.models.controller import ControllerConfig, build_controller_bank
from irl_lens.models.metacontroller import (
    MetacontrollerConfig,
    build_metacontroller,
    load_metacontroller,
)
from irl_lens.models.policy import PolicyConfig, build_policy
from irl_lens.models.ssm import linear_scan
from irl_lens.rollout.ant import AntRolloutEngine, ColourSwitcher, seeded_ant_env
from irl_lens.rollout.grid import GridRolloutEngine, seeded_env
from irl_lens.rollout.kit import env_kit
from irl_lens.rollout.switchers import GroundTruthSwitcher
from irl_lens.train.discover import _loss as discover_loss
from irl_lens.train.internal_rl import collect, ppo_update
from irl_lens.train.pretrain import _train_step, make_optimizer

logger = logging.getLogger(__name__)


def _timeit(fn, seconds: float, min_reps: int = 3) -> float:
    """Seconds per call of ``fn`` (after one warm-up call)."""
    fn()
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return (time.perf_counter() - start) / reps


def peak_gflops(seconds: float = 1.0, n: int = 1024) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _timeit(lambda: a @ b, seconds) / 1e9


def model_matmul_shapes(cfg, n_tokens: int, n_seqs: int, seq_len: int) -> list[tuple]:
    """The GEMMs of one forward pass: ("mm", M, K, N) or ("bmm", B, M, K, N)."""
    d, h = cfg.d_model, cfg.n_heads
    dh = d // h
    shapes: list[tuple] = [("mm", n_tokens, cfg.d_cell if cfg.obs_kind == "grid" else d, d)]
    for _ in range(cfg.n_layers):
        shapes += [("mm", n_tokens, d, d)] * 4  # W_Q, W_K, W_V, W_O
        shapes += [
            ("bmm", n_seqs * h, seq_len, dh, seq_len),
            ("bmm", n_seqs * h, seq_len, seq_len, dh),
        ]
        shapes += [("mm", n_tokens, d, cfg.d_mlp), ("mm", n_tokens, cfg.d_mlp, d)]
    shapes.append(("mm", n_tokens, d, cfg.n_action_outputs + cfg.n_obs_outputs))
    return shapes


def matmul_seconds(shapes: list[tuple], seconds: float) -> tuple[float, float]:
    """Time forward + backward GEMMs (each forward GEMM has two backward GEMMs of its size).

    Returns ``(seconds per training step spent in matmuls, FLOPs per step)``.
    """
    ops, flops = [], 0.0
    for s in shapes:
        if s[0] == "mm":
            _, m, k, n = s
            a, b, g = torch.randn(m, k), torch.randn(k, n), torch.randn(m, n)
            ops += [(torch.mm, a, b), (torch.mm, g, b.t()), (torch.mm, a.t(), g)]
            flops += 3 * 2 * m * k * n
        else:
            _, bt, m, k, n = s
            a, b, g = torch.randn(bt, m, k), torch.randn(bt, k, n), torch.randn(bt, m, n)
            ops += [
                (torch.bmm, a, b),
                (torch.bmm, g, b.transpose(1, 2)),
                (torch.bmm, a.transpose(1, 2), g),
            ]
            flops += 3 * 2 * bt * m * k * n

    def run():
        for f, x, y in ops:
            f(x, y)

    return _timeit(run, seconds), flops


def pretrain_throughput(seconds: float, seed: int = 0, preset: str = "quick",
                        device: str = "cpu", min_steps: int = 3,
                        with_bound: bool = True) -> dict[str, float]:  # fmt: skip
    """Tokens/s of real training steps of ``preset``'s base model on ``device`` (one warm-up
    step, then at least ``min_steps``), and (``with_bound``) the matmul-bound rate for them."""

    chosen = presets.get(preset)
    model_cfg, train_cfg = chosen.base, chosen.pretrain
    n_episodes = max(4000, 3 * train_cfg.tokens_per_batch // 8)  # several batches' worth
    ds = generate_gridworld(n_episodes, "pretrain", seed=seed, progress=False)
    model = build_model(model_cfg, seed=seed).to(device, print_details=False)
    opt = make_optimizer(model, train_cfg)
    batches = [
        make_batch(ds, e, device)
        for e in bucketed_batches(
            ds.lengths, train_cfg.tokens_per_batch, np.random.default_rng(seed)
        )
    ]
    _train_step(model, opt, batches[0], train_cfg, train_cfg.lr)  # warm-up
    tokens = padded = 0
    start = time.perf_counter()
    i = 0
    while time.perf_counter() - start < seconds or i < min_steps:
        b = batches[i % len(batches)]
        _train_step(model, opt, b, train_cfg, train_cfg.lr)
        tokens += b.n_tokens  # a host sync per step: the step's time is all counted
        padded += b.mask.numel()
        i += 1
    elapsed = time.perf_counter() - start
    tok_s = tokens / elapsed
    if not with_bound:
        return {"pretrain_tokens_per_s": tok_s, "pretrain_padding_fraction": 1 - tokens / padded}
    # matmul-only time for the same batches (average shape over the timed batches)
    n_seqs = int(np.mean([b.mask.shape[0] for b in batches]))
    seq_len = int(np.mean([b.mask.shape[1] for b in batches]))
    shapes = model_matmul_shapes(model_cfg, n_seqs * seq_len, n_seqs, seq_len)
    mm_s, flops = matmul_seconds(shapes, max(1.0, seconds / 3))
    bound = n_seqs * seq_len * (tokens / padded) / mm_s
    return {
        "pretrain_tokens_per_s": tok_s,
        "pretrain_padding_fraction": 1 - tokens / padded,
        "matmul_bound_tokens_per_s": bound,
        "pretrain_matmul_fraction": tok_s / bound,
        "pretrain_matmul_gflops": flops / mm_s / 1e9,
        "pretrain_flops_per_token": flops / (n_seqs * seq_len),
    }


def discover_throughput(seconds: float, seed: int = 0, preset: str = "quick",
                        device: str = "cpu", min_steps: int = 3) -> dict[str, float]:  # fmt: skip
    """Metacontroller training steps/s (the ELBO's forward and backward at ``preset``'s batch,
    a random base of its size, layer L/2) on ``device``."""
    chosen = presets.get(preset)
    cfg = chosen.discover
    ds = generate_gridworld(max(2000, cfg.tokens_per_batch // 4), "clean", seed=seed,
                            progress=False)  # fmt: skip
    base = build_model(chosen.base, seed=seed).to(device, print_details=False)
    for p in base.parameters():
        p.requires_grad_(False)
    mc = build_metacontroller(MetacontrollerConfig(chosen.base.d_model), seed=seed).to(device)
    opt = torch.optim.AdamW(mc.parameters(), lr=cfg.lr)
    layer = chosen.base.n_layers // 2
    order = bucketed_batches(ds.lengths, cfg.tokens_per_batch, np.random.default_rng(seed))
    generator = torch.Generator().manual_seed(seed)

    def one(i: int) -> None:
        parts = discover_loss(base, mc, layer, make_batch(ds, order[i % len(order)]), cfg,
                              0.0, generator)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()

    one(0)  # warm-up
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < min_steps:
        one(steps + 1)
        steps += 1
    return {"discover_steps_per_s": steps / (time.perf_counter() - start)}


def internal_rl_throughput(model, mc, seconds: float, seed: int, n_envs: int = 1024,
                           preset: str = "quick") -> dict:  # fmt: skip
    """Internal-RL episodes/s on the post-training task: rollouts alone, and with the update
    (``preset``'s RL settings, on the model's device)."""

    cfg = presets.get(preset).rl
    device = next(model.parameters()).device
    policy = build_policy(PolicyConfig(model.cfg.d_model, mc.cfg.n_z, cfg.d_policy), seed=seed)
    policy = policy.to(device)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    kit = env_kit(model, mc_layer(model, mc))
    task = parse_task("post")
    kw = dict(seed=seed, threshold=cfg.threshold, always_switch=False)
    collect(kit, mc, policy, task, 64, stream=999, **kw)  # warm-up
    t_roll = t_all = 0.0
    episodes = abstract = 0
    b = 0
    while t_all < seconds or b == 0:
        t0 = time.perf_counter()
        batch = collect(kit, mc, policy, task, n_envs, stream=b, **kw)
        t1 = time.perf_counter()
        ppo_update(policy, opt, batch, cfg)
        t_roll += t1 - t0
        t_all += time.perf_counter() - t0
        episodes += n_envs
        abstract += int(batch.n_abstract.sum())
        b += 1
    return {
        "internal_rl_rollout_episodes_per_s": episodes / t_roll,
        "internal_rl_episodes_per_s": episodes / t_all,
        "internal_rl_abstract_steps_per_episode": abstract / episodes,
    }


def ant_throughput(seconds: float, seed: int, data_episodes: int = 256) -> dict[str, float]:
    """Ant env steps/s (batched and single) and ant data episodes/s (see the module docstring)."""

    rng = np.random.default_rng(seed)
    env = BatchedAntPinpad(64)
    env.reset(seed=seed)
    actions = rng.uniform(-1, 1, (64, 8))

    def batched_step() -> None:
        env.step(actions)
        env.reset_done()

    out = {"ant_env_steps_per_s": 64 / _timeit(batched_step, seconds)}
    single = AntPinpadEnv()
    single.reset(seed=seed)

    def single_step() -> None:
        _, _, term, trunc, _ = single.step(actions[0])
        if term or trunc:
            single.reset()

    out["ant_env_steps_per_s_single"] = 1 / _timeit(single_step, seconds)
    if SHIPPED_EXPERT.is_file():
        n = data_episodes
        t0 = time.perf_counter()
        ds = generate_ant(n, "clean", seed=seed, progress=False)
        wall = time.perf_counter() - t0
        out["ant_data_episodes_per_s"] = n / wall
        out["ant_data_steps_per_s"] = ds.n_steps / wall
    return out


def ant_engine_throughput(
    seconds: float, seed: int, n_envs: int = 256, max_steps: int = 100
) -> dict[str, float]:
    """Env steps/s of controlled ant rollouts (see the module docstring)."""

    cfg = BaseModelConfig(obs_kind="vector", obs_dim=ANT_OBS_DIM, action_kind="continuous",
                          n_actions=8, n_ctx=ANT_MAX_STEPS)  # quick sizes  # fmt: skip
    model = build_model(cfg, seed=seed).eval()
    bank = build_controller_bank(ControllerConfig(cfg.d_model, ANT_N_COLOURS), seed=seed)
    engine = AntRolloutEngine(model, 2)
    generator = torch.Generator().manual_seed(seed)
    steps, elapsed, b = 0, 0.0, 0
    while elapsed < seconds or b == 0:
        env = seeded_ant_env(n_envs, task="post", seed=seed, stream=b)
        t0 = time.perf_counter()
        ro = engine.run(env, controller_fn=ColourSwitcher(bank.select), generator=generator,
                        max_steps=max_steps)  # fmt: skip
        elapsed += time.perf_counter() - t0
        steps += int(ro.length.sum())
        b += 1
    return {"ant_engine_steps_per_s": steps / elapsed, "ant_engine_n_envs": float(n_envs)}


def engine_benchmark(
    model: ActionModel,
    n_envs: int = 1024,
    *,
    layer: int | None = None,
    min_seconds: float = 3.0,
    max_batches: int = 20,
    controlled: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Throughput of the gridworld rollout engine on the pretraining tasks, sampled actions.

    Runs batches of ``n_envs`` episodes (after one small warm-up batch) until
    ``min_seconds`` have passed or ``max_batches`` batches ran. With ``controlled`` a
    random rank-16 controller bank picked by the ground-truth subgoal acts at ``layer``,
    as in supervised-controller evaluation. Returns ``engine/``-namespaced numbers.
    """
    engine = GridRolloutEngine(model, layer)
    fn = None
    if controlled:
        bank = build_controller_bank(ControllerConfig(model.cfg.d_model, N_SUBGOALS), seed=seed)
        with torch.no_grad():  # a non-zero B, so the control path does real work
            bank.B.normal_(0, 0.01, generator=torch.Generator().manual_seed(seed))
        fn = GroundTruthSwitcher(bank.to(engine.device).select)
    generator = torch.Generator().manual_seed(seed)
    engine.run(
        seeded_env(min(64, n_envs), seed=seed, stream=99), controller_fn=fn, generator=generator
    )
    episodes = steps = 0
    elapsed = 0.0
    batches = 0
    while batches < max_batches and (elapsed < min_seconds or batches == 0):
        env = seeded_env(n_envs, seed=seed, stream=100 + batches)
        t0 = time.perf_counter()
        ro = engine.run(env, controller_fn=fn, generator=generator)
        elapsed += time.perf_counter() - t0
        episodes += n_envs
        steps += int(ro.length.sum())
        batches += 1
    return {
        "engine/episodes_per_s": episodes / elapsed,
        "engine/env_steps_per_s": steps / elapsed,
        "engine/mean_length": steps / episodes,
        "engine/n_envs": float(n_envs),
        "engine/layer": float(engine.layer),
        "engine/controlled": float(controlled),
        "engine/fast_path": float(engine.fast_path),
        "engine/seconds": elapsed,
    }


SCAN_SHAPES = {"policy": (1024, 100, 64), "ant": (64, 500, 256)}


def scan_throughput(seconds: float, seed: int, device: str = "cpu") -> dict[str, float]:
    """The two scans of :func:`~irl_lens.models.ssm.linear_scan`, forward + backward."""
    out: dict[str, float] = {}
    g = torch.Generator().manual_seed(seed)
    for name, shape in SCAN_SHAPES.items():
        log_a = (-torch.rand(shape, generator=g) * 0.5).to(device).requires_grad_()
        b = torch.randn(shape, generator=g).to(device).requires_grad_()
        for method in ("loop", "doubling"):

            def once(method=method, log_a=log_a, b=b) -> None:
                linear_scan(log_a, b, method=method).square().sum().backward()
                if device != "cpu":
                    torch.cuda.synchronize()

            out[f"ssm_scan_{name}_{method}_ms"] = 1000 * _timeit(once, seconds / 4, min_reps=2)
        out[f"ssm_scan_{name}_doubling_vs_loop"] = (
            out[f"ssm_scan_{name}_loop_ms"] / out[f"ssm_scan_{name}_doubling_ms"]
        )
    return out


def mc_layer(model, mc) -> int:
    """The layer a benchmark metacontroller acts at (stored on it by :func:`run_bench`)."""
    return getattr(mc, "bench_layer", model.cfg.n_layers // 2)


def run_bench(
    seconds: float = 3.0, seed: int = 0, run=None, mc=None
) -> dict[str, float | str | int]:
    """All throughput figures as a flat dict (see the module docstring)."""

    torch.manual_seed(seed)
    result: dict[str, float | str | int] = {
        "machine": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    logger.info("timing the batched env")
    env = env_benchmark(n_envs=4096, seconds=seconds)
    result["env_steps_per_s"] = env["env_steps_per_s"]
    logger.info("timing data generation")
    n = 20_000
    t0 = time.perf_counter()
    generate_gridworld(n, "pretrain", seed=seed, progress=False)
    result["data_episodes_per_s"] = n / (time.perf_counter() - t0)
    logger.info("timing pretraining")
    result["peak_gflops"] = peak_gflops(seconds=min(seconds, 2.0))
    result |= pretrain_throughput(seconds, seed)
    result["pretrain_peak_fraction"] = (
        result["pretrain_tokens_per_s"]
        * result["pretrain_flops_per_token"]
        / 1e9
        / result["peak_gflops"]
    )
    result |= ant_throughput(seconds, seed)
    logger.info("timing the ant rollout engine")
    result |= ant_engine_throughput(seconds, seed)
    result["ant_engine_env_fraction"] = (
        result["ant_engine_steps_per_s"] / result["ant_env_steps_per_s"]
    )
    logger.info("timing the RG-LRU scans")
    result |= scan_throughput(seconds, seed)

    if run is not None:
        model = load_base_model(run).eval()
    else:
        model = build_model(presets.get("quick").base, seed=seed).eval()
    result["engine_model"] = str(run) if run is not None else "random quick-preset model"
    logger.info("timing the rollout engine")
    eng = engine_benchmark(model, min_seconds=seconds, seed=seed)
    result |= {k.replace("engine/", "engine_"): v for k, v in eng.items()}

    if mc is not None:
        model, mcm, config = load_metacontroller(mc)
        mcm.bench_layer = int(config["layer"])
    else:
        mcm = build_metacontroller(MetacontrollerConfig(model.cfg.d_model), seed=seed).eval()
    result["internal_rl_metacontroller"] = str(mc) if mc is not None else "random"
    logger.info("timing internal-RL rollouts and updates")
    result |= internal_rl_throughput(model, mcm, seconds, seed)
    return result
