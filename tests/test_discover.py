"""Discovery trainer, its analyses and the metacontroller-driven rollouts, on tiny runs."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch

from analyses import clustering, switching
from irl_lens.data.dataset import make_batch
from irl_lens.data.generate import generate_gridworld
from irl_lens.hooks import hook_count, intervene
from irl_lens.models.base import load_base_model
from irl_lens.presets import DISCOVER as DISCOVER_PRESETS
from irl_lens.presets import PRETRAIN as BASE_PRESETS
from irl_lens.rollout.grid import GridRolloutEngine as RolloutEngine
from irl_lens.rollout.grid import seeded_env
from irl_lens.rollout.switchers import MetacontrollerDriver
from irl_lens.runs import RunError
from irl_lens.train import discover as disc
from irl_lens.train.pretrain import pretrain


@pytest.fixture(scope="module")
def clean_ds():
    return generate_gridworld(120, "clean", seed=0, progress=False)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    ds = generate_gridworld(200, "pretrain", seed=0, progress=False)
    root = tmp_path_factory.mktemp("disc")
    model_cfg, cfg = BASE_PRESETS["tiny"]
    pretrain(ds, root / "base", model_cfg, dataclasses.replace(cfg, checkpoint_every=1000),
             progress=False)  # fmt: skip
    return root / "base"


@pytest.fixture(scope="module")
def mc_run(base_run, clean_ds, tmp_path_factory):
    out = tmp_path_factory.mktemp("mc") / "mc"
    disc.discover(base_run, clean_ds, out, DISCOVER_PRESETS["tiny"], progress=False)
    return out


def test_training_keeps_the_base_bit_identical_and_writes_a_loadable_folder(mc_run, base_run):
    summary = json.loads((mc_run / "summary.json").read_text())
    assert summary["discover/base_unchanged"] == 1.0
    assert summary["discover/layer"] == 1.0  # L // 2 for the 2-layer tiny model
    base, mc, config = disc.load_metacontroller(mc_run)
    assert disc.weights_digest(base) == disc.weights_digest(load_base_model(base_run))
    assert config["train"]["variant"] == "full"
    assert hook_count(base) == 0


def test_the_uncontrolled_reference_is_what_a_fresh_metacontroller_scores(
    base_run, clean_ds, mc_run
):
    """A fresh decoder writes nothing (B starts at zero), so a fresh metacontroller's
    validation action NLL is the base's alone; the trained one's summary carries both."""
    from irl_lens.models.metacontroller import MetacontrollerConfig, build_metacontroller

    base = load_base_model(base_run)
    episodes = np.arange(100, 120)
    cfg = DISCOVER_PRESETS["tiny"]
    fresh = build_metacontroller(MetacontrollerConfig(d_model=base.cfg.d_model), seed=3).eval()
    controlled = disc.evaluate(base, fresh, 1, clean_ds, episodes, cfg, 0.0)
    alone = disc.evaluate_uncontrolled(base, clean_ds, episodes)
    assert alone["val/base_action_nll"] == pytest.approx(controlled["val/action_nll"], rel=1e-5)
    assert "val/base_next_colour_nll" not in alone  # the gridworld base has no such head
    assert disc.evaluate_uncontrolled(base, clean_ds, episodes[:0]) == {}
    summary = json.loads((mc_run / "summary.json").read_text())
    assert np.isfinite(summary["discover/base_action_nll"])
    assert summary["discover/base_action_nll"] != summary["discover/action_nll"]


def test_resume_ends_with_the_same_weights(base_run, clean_ds, tmp_path, mc_run):
    cfg = DISCOVER_PRESETS["tiny"]
    first = disc.discover(base_run, clean_ds, tmp_path / "r", cfg, stop_after=7, progress=False)
    with pytest.raises(RunError, match="already holds a run of kind metacontroller"):
        disc.discover(base_run, clean_ds, tmp_path / "r", cfg, progress=False)
    # the second leg starts from the step-6 checkpoint, whose time it adds to its own
    leg1 = torch.load(tmp_path / "r" / "checkpoints" / "step_00000006" / "trainer_state.pt",
                      weights_only=True)["train_seconds"]  # fmt: skip
    assert 0 < leg1 <= first.seconds
    t0 = time.perf_counter()
    done = disc.discover(base_run, clean_ds, tmp_path / "r", cfg, resume=True, progress=False)
    assert leg1 < done.summary["discover/train_seconds"] < leg1 + time.perf_counter() - t0
    _, a, _ = disc.load_metacontroller(mc_run)
    _, b, _ = disc.load_metacontroller(tmp_path / "r")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_beta1_and_cotrain_variants(base_run, clean_ds, tmp_path):
    cfg = dataclasses.replace(DISCOVER_PRESETS["tiny"], steps=3, variant="beta1")
    disc.discover(base_run, clean_ds, tmp_path / "b1", cfg, progress=False)
    s = json.loads((tmp_path / "b1" / "summary.json").read_text())
    assert s["discover/mean_beta"] == 1.0
    cfg = dataclasses.replace(cfg, variant="cotrain", cotrain_from_pretrained=True)
    disc.discover(base_run, clean_ds, tmp_path / "co", cfg, progress=False)
    base, _, _ = disc.load_metacontroller(tmp_path / "co")
    assert disc.weights_digest(base) != disc.weights_digest(load_base_model(base_run))


def test_an_embedder_reading_another_layer_trains_loads_and_is_analysed(
    base_run, clean_ds, tmp_path
):
    """``embed_layer``: the sequence embedder reads the base alone's top layer, the rest of
    the metacontroller the control layer; the folder records it and every posterior (the
    analyses', commitment's) hands the embedder that layer, not the control layer."""
    from irl_lens.models.metacontroller import MetacontrollerConfig, posterior

    base = load_base_model(base_run)
    top = base.cfg.n_layers
    cfg = dataclasses.replace(DISCOVER_PRESETS["tiny"], steps=5)
    with pytest.raises(ValueError, match=r"embed_layer: layer=3 is out of range; allowed: 0\.\.2"):
        bad = MetacontrollerConfig(d_model=base.cfg.d_model, embed_layer=3)
        disc.discover(base_run, clean_ds, tmp_path / "bad", cfg, mc_cfg=bad, progress=False)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    mc_cfg = MetacontrollerConfig(d_model=base.cfg.d_model, embed_layer=top)
    disc.discover(base_run, clean_ds, tmp_path / "emb", cfg, mc_cfg=mc_cfg, progress=False)
    loaded = disc.load_metacontroller(tmp_path / "emb")
    assert loaded.mc.cfg.embed_layer == top and loaded.layer == 1
    batch = make_batch(clean_ds, [100, 101, 102])
    with torch.no_grad():
        e = loaded.base(batch.obs, stop_at_layer=1)
        top_e = loaded.base(batch.obs, stop_at_layer=top)
        got = posterior(loaded.base, loaded.mc, 1, batch.obs, batch.mask, sample=False)
        want = loaded.mc(e, batch.mask, sample=False, e_embed=top_e)
        control = loaded.mc(e, batch.mask, sample=False, e_embed=e)
    torch.testing.assert_close(got.mu, want.mu)
    torch.testing.assert_close(loaded.posterior(batch.obs, batch.mask, sample=False).z, want.z)
    assert not torch.allclose(want.mu, control.mu)  # the embedder reads the top layer
    with pytest.raises(ValueError, match="reads layer 2: pass that layer's residuals"):
        loaded.mc(e, batch.mask)
    betas, _, _ = switching.episode_betas(tmp_path / "emb", clean_ds, np.arange(100, 104))
    assert len(betas) == 4


def test_config_errors():
    with pytest.raises(ValueError, match="variant"):
        disc.DiscoverConfig(variant="nope")
    with pytest.raises(ValueError, match="alpha"):
        disc.DiscoverConfig(alpha=-1.0)
    with pytest.raises(ValueError, match=r"rate='gate'; allowed: step, switch"):
        disc.DiscoverConfig(rate="gate")


def test_the_switch_rate_charges_a_code_only_where_the_switch_takes_it(mc_run, clean_ds):
    """``rate="switch"``: held steps cost nothing, a switch costs its proposal's KL; the
    gradient reaches the switch (a switch must pay to be taken)."""
    from irl_lens.models.metacontroller import MetacontrollerOutput

    kl = torch.tensor([[2.0, 4.0, 6.0, 8.0]])
    beta = torch.tensor([[1.0, 0.0, 0.5, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last step is padding
    zeros = torch.zeros(1, 4, 2)
    mo = MetacontrollerOutput(zeros, beta, beta, zeros, zeros, zeros, zeros, kl)
    assert disc.charged_kl(mo, mask, "step").item() == pytest.approx((2 + 4 + 6) / 3)
    charged = disc.charged_kl(mo, mask, "switch")
    assert charged.item() == pytest.approx((2 + 0 + 3) / 3)
    charged.backward()
    assert beta.grad.tolist() == [[pytest.approx(2 / 3), pytest.approx(4 / 3), 2.0, 0.0]]
    # in the trainer's loss: the same batch, the same noise, the charged KL shrinks by the
    # gates and nothing else changes
    loaded = disc.load_metacontroller(mc_run)
    cfg = DISCOVER_PRESETS["tiny"]
    batch = make_batch(clean_ds, np.arange(8), torch.device("cpu"))
    parts = {}
    for rate in ("step", "switch"):
        c = dataclasses.replace(cfg, rate=rate)
        parts[rate] = disc._loss(loaded.base, loaded.mc, loaded.layer, batch, c, 0.0,
                                 torch.Generator().manual_seed(0), alpha=1.0)  # fmt: skip
    step, switch = parts["step"], parts["switch"]
    assert torch.equal(step.beta, switch.beta) and step.action_nll == switch.action_nll
    assert 0 < switch.kl < step.kl
    assert (step.loss - switch.loss).item() == pytest.approx((step.kl - switch.kl).item(), rel=1e-5)


def test_driver_rollout_equals_the_full_forward_with_the_same_codes(mc_run):
    base, mc, config = disc.load_metacontroller(mc_run)
    layer = int(config["layer"])
    env = seeded_env(12, seed=3)
    driver = MetacontrollerDriver(mc, threshold=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ro = RolloutEngine(base, layer).run(
            env, controller_fn=driver, record_logits=True,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        n = ro.n_steps
        codes = torch.from_numpy(driver.codes[:, :n])
        with intervene(base, layer, lambda e: mc.apply_code(e, codes)):
            full = base.split(base(ro.obs_tokens())).action_params
    valid = torch.from_numpy(ro.valid)
    torch.testing.assert_close(full[valid], ro.logits[valid], atol=1e-4, rtol=1e-4)
    # a new code exactly where beta crossed the threshold (and at t = 0)
    beta = driver.beta[:, :n]
    expected = (beta >= 0.5) | (np.arange(n)[None] == 0)
    assert np.array_equal(driver.switched[:, :n][ro.valid], expected[ro.valid])
    changed = np.any(driver.codes[:, 1:n] != driver.codes[:, : n - 1], axis=-1)
    assert not changed[ro.valid[:, 1:] & ~driver.switched[:, 1:n]].any()


def test_alignment_scores_on_hand_made_episodes():
    sub = [np.array([0, 0, 0, 1, 1, 1, 2, 2])]  # boundaries at t = 3 and 6
    exact = [np.array([1, 0, 0, 1, 0, 0, 1, 0.0])]
    late = [np.array([1, 0, 0, 0, 1, 0, 0, 1.0])]  # t = 4 and 7: one step late
    p, r, f, n_pred, n_true = switching.alignment_scores(exact, sub)
    assert (n_pred, n_true) == (2, 2) and f == [1.0, 1.0, 1.0]
    p, r, f, _, _ = switching.alignment_scores(late, sub)
    assert f[0] == 0.0 and f[1] == 1.0
    extra = [np.array([1, 1, 0, 1, 0, 0, 1, 0.0])]  # one spurious switch at t = 1
    p, r, f, _, _ = switching.alignment_scores(extra, sub)
    assert p[0] == pytest.approx(2 / 3) and r[0] == 1.0


def test_clustering_recovers_planted_codes():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8)) * 5
    truth = rng.integers(0, 4, size=200)
    z = centres[truth] + rng.normal(size=(200, 8)) * 0.1
    res = clustering.cluster_codes(z, truth)
    assert res.nmi > 0.99 and res.ari > 0.99
    assert sorted(res.cluster_subgoal) == [0, 1, 2, 3]
    shuffled = clustering.cluster_codes(rng.normal(size=(200, 8)), truth)
    assert shuffled.nmi < 0.1


def test_code_semantics_tells_colour_codes_from_cell_codes(clean_ds):
    held = np.arange(clean_ds.n_episodes)
    subgoals = [clean_ds.arrays["subgoal"][o : o + n]
                for o, n in zip(clean_ds.offsets[:-1], clean_ds.lengths, strict=True)]  # fmt: skip
    cells = clustering.segment_target_cells(clean_ds, held, subgoals)
    # recompute one segment's cell by hand: episode 0's first segment targets colour 2k first
    k = int(subgoals[0][0])
    layout = clean_ds.arrays["layout"][0].reshape(7, 7)
    assert layout[int(cells[0, 0]), int(cells[0, 1])] == 1 + 2 * k
    rng = np.random.default_rng(0)
    _, truth = clustering.segment_codes([np.zeros((len(g), 2)) for g in subgoals], subgoals)
    assert len(truth) == len(cells)
    colour_codes = np.eye(4)[truth] * 3 + rng.normal(size=(len(truth), 4)) * 0.1
    sem = clustering.code_semantics(colour_codes, truth, cells)
    assert sem["subgoal_accuracy"] > 0.95 and sem["target_cell_r2"] < 0.2
    cell_codes = cells + rng.normal(size=cells.shape) * 0.1  # "go to that cell", any colour
    sem = clustering.code_semantics(cell_codes, truth, cells)
    assert sem["target_cell_r2"] > 0.95 and sem["subgoal_accuracy"] < sem["subgoal_chance"] + 0.15


def test_code_semantics_tells_absolute_codes_from_history_relative_ones(clean_ds):
    subgoals = [clean_ds.arrays["subgoal"][o : o + n]
                for o, n in zip(clean_ds.offsets[:-1], clean_ds.lengths, strict=True)]  # fmt: skip
    _, truth = clustering.segment_codes([np.zeros((len(g), 2)) for g in subgoals], subgoals)
    prev = clustering.segment_previous(subgoals)
    assert len(prev) == len(truth)
    # by hand: an episode starts with "none", then each segment's predecessor is the last one
    first = np.flatnonzero(np.append(True, subgoals[0][1:] != subgoals[0][:-1]))
    n0 = len(first)
    assert prev[0] == -1 and list(prev[1:n0]) == [int(subgoals[0][t]) for t in first[:-1]]
    rng = np.random.default_rng(0)
    absolute = np.eye(4)[truth] * 3 + rng.normal(size=(len(truth), 4)) * 0.1
    sem = clustering.code_semantics(absolute, truth, previous=prev)
    assert sem["previous_accuracy"] < sem["previous_chance"] + 0.1
    # "which of the options the history leaves": the code also moves with the predecessor
    relative = np.concatenate([absolute, np.eye(5)[prev + 1] * 3], axis=1)
    relative += rng.normal(size=relative.shape) * 0.1
    sem = clustering.code_semantics(relative, truth, previous=prev)
    assert sem["previous_accuracy"] > 0.95 and sem["subgoal_accuracy"] > 0.95


def test_cli_discover_end_to_end(base_run, tmp_path, capsys):
    from irl_lens.cli import main

    data = tmp_path / "clean"
    main(["data", "gridworld", "--split", "clean", "--episodes", "100", "--out", str(data)])
    out = tmp_path / "mc"
    main(["discover", str(base_run), "--out", str(out), "--data", str(data), "--preset", "tiny",
          "--episodes", "40", "--task", "0-1-2-3", "--weight-decay", "0.01",
          "--tokens-per-batch", "512", "--kl-free-steps", "3",
          "--kl-warmup-steps", "4", "--obs-loss-weight", "0", "--rate", "switch"])  # fmt: skip
    text = capsys.readouterr().out
    assert "switch alignment" in text and "NMI" in text and "target cell R2" in text
    assert "(the base alone: " in text
    s = json.loads((out / "summary.json").read_text())
    for key in ("switching/f1_tol1", "clustering/nmi", "clustering/subgoal_accuracy",
                "clustering/target_cell_r2", "steering/task_success", "prior/success"):  # fmt: skip
        assert key in s
    for fig in ("switching_beta.html", "clusters.html", "steering.html"):
        assert (out / fig).stat().st_size > 1000
    config = json.loads((out / "config.json").read_text())
    assert config["metacontroller"]["rank"] == 16 and config["train"]["weight_decay"] == 0.01
    train = config["train"]
    assert (train["tokens_per_batch"], train["kl_free_steps"], train["kl_warmup_steps"],
            train["obs_loss_weight"], train["rate"]) == (512, 3, 4, 0.0, "switch")  # fmt: skip
    capsys.readouterr()
    for bad in (["--layer", "9"], ["--rank", "0"], ["--rank", "999"], ["--rank", "low"],
                ["--embed-layer", "9"], ["--rate", "gate"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(["discover", str(base_run), "--out", str(tmp_path / "x"), "--preset", "tiny",
                  "--data", str(data), *bad])  # fmt: skip
        assert e.value.code == 2, bad
    err = capsys.readouterr().err
    assert "--rank '999': give a number from 1 to d_model" in err, err
    assert "embed_layer: layer=9 is out of range; allowed: 0..2" in err, err


def test_rate_distortion_table_takes_medians_over_seeds_and_the_figure_a_log_rate():
    from analyses.rate_distortion import RDPoint, format_table, rd_figure, rd_table, table_summary

    def pt(variant, alpha, seed, rate, dist, f1):
        return RDPoint(f"{variant}-{alpha}-{seed}", variant, alpha, seed, rate, dist, f1, 2.0)

    points = [pt("full", 0.1, 0, 0.30, 0.15, 1.0), pt("full", 0.1, 1, 0.20, 0.17, 0.95),
              pt("full", 0.1, 2, 0.25, 0.30, 0.10), pt("full", 1.0, 0, 0.0, 0.24, 0.0),
              pt("cotrain", 0.1, 0, 0.4, 0.2, 0.5)]  # fmt: skip
    rows = rd_table(points)
    assert [(r.variant, r.alpha, r.n_seeds) for r in rows] == [
        ("cotrain", 0.1, 1), ("full", 0.1, 3), ("full", 1.0, 1)]  # fmt: skip
    full = rows[1]
    assert (full.rate, full.rate_min, full.rate_max) == (0.25, 0.20, 0.30)
    assert full.distortion == 0.17 and full.aligned == pytest.approx(2 / 3)
    assert table_summary(rows)["rd/full/a0.1/aligned"] == pytest.approx(2 / 3)
    assert "0.250 [0.200, 0.300]" in format_table(rows)
    fig = rd_figure(points, rate_floor=1e-3)
    assert fig.layout.xaxis.type == "log"
    seeds = [t for t in fig.data if t.name == "frozen base: one seed"][0]
    assert min(seeds.x) == 1e-3  # the collapsed run (rate 0) sits at the floor, not off-axis
    medians = [t for t in fig.data if t.name.startswith("frozen base: median")][0]
    assert list(medians.y) == [0.17, 0.24] and list(medians.text) == ["0.1", "1"]


def test_rate_distortion_sweep_runs_in_processes_and_skips_finished_runs(base_run, tmp_path,
                                                                          capsys):  # fmt: skip
    from irl_lens.cli import main

    data = tmp_path / "clean"
    main(["data", "gridworld", "--split", "clean", "--episodes", "100", "--out", str(data)])
    args = ["sweep", "rate-distortion", str(base_run), "--out", str(tmp_path / "rd"),
            "--alphas", "0,0.5", "--seeds", "1", "--variants", "full", "--preset", "tiny",
            "--data", str(data), "--episodes", "16", "--workers", "2",
            "--switch", "gumbel", "--layer", "1", "--rank", "full", "--tokens-per-batch", "512",
            "--kl-free-steps", "2", "--kl-warmup-steps", "5", "--embed-layer", "2",
            "--rate", "switch"]  # fmt: skip
    main(args)
    text = capsys.readouterr().out
    assert "full" in text and "FAILED" not in text and "per alpha: median over seeds" in text
    s = json.loads((tmp_path / "rd" / "summary.json").read_text())
    assert s["sweep/finished"] == 2.0 and s["sweep/failed"] == 0.0
    assert s["rd/full/a0.5/n_seeds"] == 1.0 and "rd/full/a0/rate" in s
    cfg = json.loads((tmp_path / "rd" / "full-a0.5-s0" / "config.json").read_text())
    assert cfg["metacontroller"]["switch"] == "gumbel" and cfg["layer"] == 1
    assert cfg["metacontroller"]["rank"] is None  # --rank full reached every run
    assert cfg["metacontroller"]["embed_layer"] == 2  # so did --embed-layer
    assert cfg["train"]["rate"] == "switch"  # and --rate
    assert (cfg["train"]["tokens_per_batch"], cfg["train"]["kl_free_steps"],
            cfg["train"]["kl_warmup_steps"]) == (512, 2, 5)  # fmt: skip
    assert (tmp_path / "rd" / "rate_distortion.html").stat().st_size > 1000
    stamp = (tmp_path / "rd" / "full-a0.5-s0" / "summary.json").stat().st_mtime
    main(args)  # again: both runs are skipped
    assert (tmp_path / "rd" / "full-a0.5-s0" / "summary.json").stat().st_mtime == stamp
    with pytest.raises(SystemExit):
        main([*args[:6], "--alphas", "x"])
