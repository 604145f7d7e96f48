"""The base shipped in the package (issue 32): ship, unpack, and reproduce ant starting from it."""

from __future__ import annotations

import json

import pytest
import torch

from irl_lens.cli import main
from irl_lens.models import shipped
from irl_lens.models.base import BaseModelConfig, load_base_model
from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def ant_base(tmp_path_factory):
    root = tmp_path_factory.mktemp("ant-base")
    main(["data", "ant", "--split", "pretrain", "--episodes", "12", "--out", str(root / "data"),
          "--seed", "0"])  # fmt: skip
    main(["pretrain", str(root / "data"), "--out", str(root / "base"), "--preset", "tiny",
          "--arch", "hawk", "--steps", "4"])  # fmt: skip
    return root / "base"


@pytest.fixture()
def assets(tmp_path, monkeypatch):
    """Where the package's shipped base lives, for this test only."""
    folder = tmp_path / "assets" / "ant_base"
    monkeypatch.setattr(shipped, "SHIPPED_ANT_BASE", folder)
    return folder


def test_evaluate_ships_the_base_and_unpack_base_gives_it_back(ant_base, assets, tmp_path,
                                                                capsys):  # fmt: skip
    assert shipped.shipped_card() is None
    code, out, _ = run_cli(["evaluate", str(ant_base), "--episodes", "2", "--ship"], capsys)
    assert code == 0 and f"shipped {ant_base} as {assets}" in out
    card = shipped.shipped_card()
    config = json.loads((ant_base / "config.json").read_text())
    summary = json.loads((ant_base / "summary.json").read_text())
    assert card["env"] == "ant" and card["preset"] == "tiny" and card["model"]["arch"] == "hawk"
    assert card["pretrain_command"] == (
        "irl-lens --threads 1 pretrain DATA --out RUN --preset tiny --arch hawk "
        "--no-path-features --steps 4 --seed 0"
    )
    assert card["data"]["sha256"] == config["data_sha256"] and card["data"]["command"] == (
        "irl-lens data ant --split pretrain --episodes 12 --out DATA --seed 0"
    )
    # the numbers just printed, free-running ones included, and the pretraining wall-clock
    assert card["summary"]["rollout/success"] == summary["rollout/success"]
    assert card["summary"]["train_seconds"] > 0
    assert sorted(p.name for p in assets.iterdir()) == ["card.json", *shipped.FILES]

    code, out, _ = run_cli(["unpack-base", "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and "trained with: irl-lens --threads 1 pretrain" in out
    a, b = load_base_model(ant_base), load_base_model(tmp_path / "b")
    assert type(a) is type(b) and all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)  # fmt: skip
    )
    unpacked = json.loads((tmp_path / "b" / "config.json").read_text())
    assert unpacked["shipped"] == "card.json" and unpacked["data"] is None
    # an evaluation of the unpacked base names the data it needs
    code, _, err = run_cli(["evaluate", str(tmp_path / "b")], capsys)
    assert code == 2 and "pass --data DIR" in err


def test_unpack_base_writes_only_where_it_may(ant_base, assets, tmp_path, capsys):
    code, _, err = run_cli(["unpack-base", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "ships no base model" in err and not (tmp_path / "b").exists()
    shipped.ship_base(ant_base, "test")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run_cli(["unpack-base", "--out", str(mine)], capsys)
    assert code == 2 and "did not write" in err and (mine / "notes.txt").read_text() == "keep"
    # weights that do not match their card are refused, not loaded
    (assets / "model.safetensors").write_bytes(b"0" * 64)
    code, _, err = run_cli(["unpack-base", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "SHA-256" in err


def test_only_an_ant_base_is_shipped(tiny_model, tmp_path, capsys, assets):
    main(["data", "gridworld", "--split", "pretrain", "--episodes", "40", "--out",
          str(tmp_path / "d")])  # fmt: skip
    main(["pretrain", str(tmp_path / "d"), "--out", str(tmp_path / "g"), "--preset", "tiny",
          "--steps", "2"])  # fmt: skip
    code, _, err = run_cli(["evaluate", str(tmp_path / "g"), "--episodes", "2", "--ship"], capsys)
    assert code == 2 and "ships an ant base only" in err and not assets.exists()


def test_reproduce_ant_starts_from_the_shipped_base_of_its_preset(ant_base, assets, tmp_path):
    from irl_lens.cli.reproduce import ReproduceSettings, stages

    def jobs(**kw):
        found = stages(tmp_path, ReproduceSettings(env="ant", preset="tiny", **kw))
        return {stage.name: [job.args for job in stage.jobs] for stage in found}

    trained = jobs()  # nothing shipped: pretraining data, then pretraining
    assert [a[3] for a in trained["data"]] == ["pretrain", "clean"]
    assert trained["base"][0][0] == "pretrain"
    shipped.ship_base(ant_base, "test")
    from_package = jobs()
    assert [a[3] for a in from_package["data"]] == ["clean"]
    assert from_package["base"] == [["unpack-base", "--out", str(tmp_path / "base")]]
    assert jobs(from_scratch=True) == trained
    # a base shipped for another preset is not this preset's
    assert stages(tmp_path, ReproduceSettings(env="ant", preset="quick"))[1].jobs[0].args[0] == (
        "pretrain"
    )


def test_the_report_says_where_a_shipped_base_came_from(ant_base, assets, tmp_path):
    from irl_lens.cli.reproduce import ReproduceSettings, report

    shipped.ship_base(ant_base, "test")
    shipped.unpack_base(tmp_path / "base")
    text = report(tmp_path, ReproduceSettings(env="ant", preset="tiny"), {}, {})
    assert "- base: shipped in the package (" in text and (
        "pretrained with `irl-lens --threads 1 pretrain DATA --out RUN --preset tiny --arch "
        "hawk --no-path-features --steps 4 --seed 0` in " in text
    )
    assert "- base: `irl-lens unpack-base --out" in text


def test_the_package_ships_the_quick_ant_base_that_its_preset_retrains():
    import dataclasses

    from irl_lens import presets, runs
    from irl_lens.cli.reproduce import ReproduceSettings, stages
    from irl_lens.models.hawk import HawkActionModel

    card = shipped.shipped_card()
    assert card is not None and (card["env"], card["preset"]) == ("ant", "quick")
    weights = shipped.SHIPPED_ANT_BASE / "model.safetensors"
    assert runs.file_sha256(weights) == card["weights_sha256"]
    assert isinstance(load_base_model(shipped.SHIPPED_ANT_BASE), HawkActionModel)
    # `--from-scratch` trains the same model: the preset's, but for what the data decide
    preset = dataclasses.asdict(presets.get("quick", "ant").base)
    from_data = {"obs_kind", "obs_dim", "action_kind", "n_actions"}
    # (the card as loaded: options added since it was trained take their defaults, off)
    model = dataclasses.asdict(BaseModelConfig(**card["model"]))
    assert {k: v for k, v in model.items() if k not in from_data} == {
        k: v for k, v in preset.items() if k not in from_data
    }
    assert card["train"]["steps"] == presets.get("quick", "ant").pretrain.steps
    assert card["pretrain_command"].startswith(
        "irl-lens --threads 1 pretrain DATA --out RUN --preset quick --arch hawk --path-features"
    )
    # free-running, against what a base that never sees the task can reach
    numbers = card["summary"]
    assert numbers["rollout/colours_per_episode"] > 0 and numbers["train_seconds"] > 0
    first = stages(shipped.SHIPPED_ANT_BASE.parent / "nowhere", ReproduceSettings(env="ant"))
    assert first[1].jobs[0].args[0] == "unpack-base"  # reproduce ant starts from it
    # and discovers on it as measured: layer 1, a Gumbel switch, the embedder on the top layer
    (discover,) = [stage for stage in first if stage.name == "discover"]
    for job in discover.jobs:
        args = " ".join(job.args)
        assert "--layer 1 --switch gumbel --embed-layer 4" in args, args
        assert "--steps 2400" in args, args


def test_the_pretrain_command_names_every_opt_in_ant_option():
    """A card's command line retrains the base it describes: each option off by default
    appears only when the run used it."""
    model = {
        "arch": "hawk",
        "path_features": True,
        "heading_features": True,
        "underfoot_features": True,
        "future_horizon": 40,
        "action_mixtures": 4,
        "next_colour_weight": 10.0,
    }
    config = {"preset": "quick", "model": model, "train": {"steps": 1200, "seed": 3}}
    assert shipped.pretrain_command(config) == (
        "irl-lens --threads 1 pretrain DATA --out RUN --preset quick --arch hawk "
        "--path-features --heading-features --underfoot-features --future-horizon 40 "
        "--action-mixtures 4 --next-colour-weight 10 --steps 1200 --seed 3"
    )
    plain = {"arch": "hawk", "path_features": True, "next_colour_weight": 0.0}
    assert "--next-colour-weight" not in shipped.pretrain_command(config | {"model": plain})
