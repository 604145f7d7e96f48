"""irl_lens dashboard: look at what the base model, the metacontroller and internal RL learned.

    streamlit run apps/controllers.py            # runs folder: runs/ (or $IRL_LENS_RUNS)

The "Runs folder" box only browses the runs root (``$IRL_LENS_RUNS``, default ``runs``) and
its subfolders: a path outside it (after following symlinks) is refused, so a visitor
cannot list or read other files on the machine. ``.streamlit/config.toml`` binds the server
to localhost; to let other machines reach it, say so explicitly:

    streamlit run apps/controllers.py --server.address 0.0.0.0

Every figure comes from the ``analyses`` package (the same functions the CLI uses); this
file only finds run folders, loads their results and lays the figures out. Models load
once per process (``st.cache_resource``); results are cached (``st.cache_data``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from analyses import clustering, composition, episodes, probes, rl_curves, switching
from analyses import controllability as ctl
from analyses import rate_distortion as rd
from irl_lens.models.metacontroller import load_metacontroller

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

PAGES = (
    "Runs",
    "Probes",
    "Controllability",
    "Switching",
    "Controllers",
    "Codes that command",
    "Rate-distortion",
    "Internal RL",
)

RUNS_ENV = "IRL_LENS_RUNS"  # the runs root; nothing outside it is listed or read
HOW_TO = {
    "base_model": "irl-lens pretrain DATA --out RUN --preset quick",
    "probe": "irl-lens probe RUN --data CLEAN_DATA",
    "supervised_controllers": "irl-lens controllers RUN --data CLEAN_DATA",
    "metacontroller": "irl-lens discover RUN --out MC --data CLEAN_DATA",
    "internal_rl": "irl-lens internal-rl MC --out RL   (or irl-lens raw-rl RUN --out RL)",
    "sweep": "irl-lens sweep rate-distortion RUN --out SWEEP --data CLEAN_DATA",
    "ant_expert": "irl-lens --threads 1 expert ant --out RUN --steps 10000000",
    "analyse": "irl-lens discover BASE --out MC --data CLEAN_DATA --analyse-only",
    "commit": "irl-lens commit MC --out MC-COMMIT --data CLEAN_DATA",
}
# the main metacontroller of `irl-lens reproduce` (variant full), opened first
MAIN_MC_NAMES = ("mc-full", "mc")


# ----------------------------------------------------------------------------- loading


@st.cache_data(show_spinner=False)
def scan(root: str) -> list[dict]:
    """Every folder under ``root`` with a ``config.json`` (or a sweep ``summary.json``).

    A file that resolves outside ``root`` (a symlink out of it) is skipped.
    """
    found = []
    base = Path(root)
    if not base.is_dir():
        return found
    for cfg in sorted(base.rglob("config.json")):
        if "checkpoints" in cfg.parts or not inside(cfg, base):
            continue
        try:
            config = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            config = {"kind": "unreadable"}
        folder = cfg.parent
        summary = _read(folder / "summary.json")
        found.append({"path": str(folder), "kind": config.get("kind", "?"), "config": config,
                      "summary": summary, "complete": bool(summary)})  # fmt: skip
    for s in sorted(base.rglob("summary.json")):
        if not inside(s, base):
            continue
        summary = _read(s)
        if any(k.startswith("sweep/") for k in summary):
            found.append({"path": str(s.parent), "kind": "sweep", "config": {},
                          "summary": summary, "complete": True})  # fmt: skip
    return found


def inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` is ``root`` or below it once both are resolved (symlinks followed)."""
    return Path(path).expanduser().resolve().is_relative_to(Path(root).expanduser().resolve())


def runs_folder(typed: str, root: str) -> Path | None:
    """The folder ``typed`` in the sidebar, resolved, or None when it is outside ``root``."""
    return Path(typed).expanduser().resolve() if inside(typed, root) else None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


@st.cache_data(show_spinner=False)
def load_json(path: str, mtime: float) -> dict:  # mtime: a new file invalidates the cache
    return json.loads(Path(path).read_text())


def json_file(path: Path) -> dict | None:
    return load_json(str(path), path.stat().st_mtime) if path.is_file() else None


@st.cache_resource(show_spinner="loading the metacontroller and its base model ...")
def metacontroller(path: str):

    return load_metacontroller(path)


@st.cache_data(show_spinner=False)
def reports(root: str) -> list[tuple[str, str]]:
    """``(folder, text)`` of every ``irl-lens reproduce`` report under ``root``.

    The report's figure links are relative to its folder, which a browser on this page
    cannot follow: they become the file's path as code.
    """

    base = Path(root)
    found = [base / "report.md"] if (base / "report.md").is_file() else []
    if base.is_dir():
        found += sorted(base.glob("*/report.md"))
    found = [p for p in found if inside(p, base)]  # a symlinked folder may point out of root
    return [(str(p.parent), re.sub(r"\[([^\]]+)\]\([^)]+\)", r"`\1`", p.read_text()))
            for p in found]  # fmt: skip


def runs_of(found: list[dict], kind: str, having: str | None = None) -> list[dict]:
    """Runs of ``kind`` (that contain the file ``having``, when given)."""
    return [r for r in found if r["kind"] == kind
            and (having is None or (Path(r["path"]) / having).is_file())]  # fmt: skip


def missing(what: str, kind: str) -> None:
    st.info(f"No {what} in this runs folder yet. Create one with:\n\n`{HOW_TO[kind]}`")


def pick(label: str, items: list[dict], key: str, index: int = 0) -> dict:
    paths = [r["path"] for r in items]
    chosen = st.selectbox(label, paths, index=index, key=key)
    return items[paths.index(chosen)]


def main_metacontroller(items: list[dict]) -> int:
    """Index of the run to open first: variant ``full`` named like the main one, any
    ``full``, else the first (alphabetical order would open ``mc-beta1``, a baseline)."""

    def rank(run: dict) -> int:
        full = (run["config"].get("train") or {}).get("variant") == "full"
        return 0 if full and Path(run["path"]).name in MAIN_MC_NAMES else 1 if full else 2

    ranks = [rank(r) for r in items]
    return ranks.index(min(ranks)) if ranks else 0


def shown(value: float | None, digits: int = 2) -> str | None:
    """``value`` with ``digits`` decimals, or None when it was not computed (None or nan)."""
    ok = value is not None and math.isfinite(value)
    return f"{value:.{digits}f}" if ok else None


# ------------------------------------------------------------------------------- pages


def page_runs(found: list[dict], root: str) -> None:
    st.header("Runs")
    if not found:
        st.warning(f"`{root}` holds no runs. Start with `make demo`, or:\n\n"
                   f"`irl-lens data gridworld --episodes 200000 --out {root}/q/data`  \n"
                   f"`{HOW_TO['base_model']}`")  # fmt: skip
        return
    for folder, text in reports(root):
        with st.expander(f"Reproduction report: {folder}/report.md", expanded=True):
            st.markdown(text)

    rows = [{"folder": r["path"], "kind": r["kind"],
             "finished": "yes" if r["complete"] else "no (summary.json missing)"}
            for r in found]  # fmt: skip
    st.dataframe(pd.DataFrame(rows), width="stretch", hide_index=True)
    run = pick("Inspect", found, "runs_pick")
    if not run["complete"]:
        st.warning("This run has no summary.json: it is unfinished or was interrupted. "
                   f"Create or continue it with `{HOW_TO.get(run['kind'], 'its command')}` "
                   "(with --resume where the command has it).")  # fmt: skip
    c1, c2 = st.columns(2)
    c1.subheader("config.json")
    c1.json(run["config"], expanded=False)
    c2.subheader("summary.json")
    c2.json(run["summary"], expanded=True)


def page_probes(found: list[dict]) -> None:

    st.header("Linear probes of the subgoal, by layer")
    items = [
        r
        for r in runs_of(found, "base_model")
        if (Path(r["path"]) / "probe" / "result.json").is_file()
    ]
    if not items:
        return missing("probe results", "probe")
    run = pick("Base model", items, "probe_pick")
    result = probes.ProbeResult(**json_file(Path(run["path"]) / "probe" / "result.json"))
    st.plotly_chart(probes.accuracy_figure(result), key="probe_acc")
    st.plotly_chart(probes.belief_figure(result), key="probe_belief")
    fig = probes.steps_figure(result)
    if fig is not None:
        st.plotly_chart(fig, key="probe_steps")


def page_controllability(found: list[dict]) -> None:

    st.header("Supervised controllers: success on the task by layer")
    items = [
        r
        for r in runs_of(found, "supervised_controllers")
        if (Path(r["path"]) / "result.json").is_file()
    ]
    if not items:
        return missing("supervised-controller results", "supervised_controllers")
    run = pick("Controllers folder", items, "ctl_pick")
    result = ctl.ControllabilityResult(**json_file(Path(run["path"]) / "result.json"))
    st.plotly_chart(ctl.success_figure(result), key="ctl_fig")
    if result.reach_greedy:
        st.plotly_chart(ctl.reach_figure(result), key="ctl_reach")
    st.caption(f"task {result.task}, {result.n_episodes} episodes per layer; best layer "
               f"{result.best_layer} of 0..{result.n_layers}")  # fmt: skip


def _analysis(found: list[dict]) -> tuple[dict, dict] | None:
    items = [
        r for r in runs_of(found, "metacontroller") if (Path(r["path"]) / "analysis.json").is_file()
    ]
    if not items:
        missing("analysed metacontrollers", "metacontroller")
        return None
    run = pick("Metacontroller", items, "mc_pick", main_metacontroller(items))
    return run, json_file(Path(run["path"]) / "analysis.json")


def page_switching(found: list[dict]) -> None:

    st.header("Switching: beta_t against the true subgoals")
    got = _analysis(found)
    if got is None:
        return
    run, analysis = got
    result = switching.SwitchResult(**analysis["switching"])

    table = {"tolerance": result.tolerances, "precision": result.precision,
             "recall": result.recall, "F1": result.f1}  # fmt: skip
    st.dataframe(pd.DataFrame(table), hide_index=True)
    c1, c2, c3 = st.columns(3)
    c1.metric("beta within 0.05 of 0/1", f"{result.binary_fraction:.2f}")
    c2.metric("switches / episode", f"{result.switches_per_episode:.2f}")
    c3.metric("true boundaries / episode", f"{result.true_switches_per_episode:.2f}")
    n = len(result.examples)
    chosen = st.multiselect("Episodes", list(range(n)), default=list(range(min(3, n))),
                            key="sw_eps")  # fmt: skip
    st.plotly_chart(switching.beta_figure(result, chosen or [0]), key="sw_fig")


def page_controllers(found: list[dict]) -> None:

    st.header("Discovered controllers: code clusters and steering")
    got = _analysis(found)
    if got is None:
        return
    run, analysis = got
    cl = clustering.ClusterResult(**analysis["clustering"])
    st.plotly_chart(clustering.cluster_figure(cl), key="cl_fig")
    c1, c2, c3, c4, c5 = st.columns(5)
    number(c1, "NMI", cl.nmi)
    number(c2, "ARI", cl.ari)
    summary = run.get("summary") or {}
    chance = {k: shown(summary.get(f"clustering/{k}_chance")) or "not computed"
              for k in ("subgoal", "previous")}  # fmt: skip
    if "clustering/subgoal_accuracy" in summary:  # analysed since the code read-outs exist
        number(c3, "code -> subgoal (linear)", summary["clustering/subgoal_accuracy"],
               help=f"chance {chance['subgoal']}")  # fmt: skip
    if "clustering/target_cell_r2" in summary:
        number(c4, "code -> target cell R2", summary["clustering/target_cell_r2"],
               help="high: the code means 'go to that cell', not 'go to colour k'")  # fmt: skip
    if "clustering/previous_accuracy" in summary:
        number(
            c5,
            "code -> previous subgoal",
            summary["clustering/previous_accuracy"],
            help=f"chance {chance['previous']}; high: the code is read relative to the "
            "history and cannot name a subgoal after a predecessor it never followed",
        )
    if "steering" not in analysis:  # analysed before the env had a rollout engine
        st.info("No steering in this analysis; re-run `irl-lens discover ... --analyse-only`.")
        return
    steering = clustering.SteeringResult(**analysis["steering"])
    fig = clustering.steering_figure(steering)
    why = steering_not_computed(steering)
    if why:  # the figure's own title would read "nan (base nan)"
        fig.update_layout(title=f"Steering with discovered codes; on task {steering.task}: {why}")
    st.plotly_chart(fig, key="steer_fig")
    st.subheader("Steer a rollout")
    k = steering.colours_per_subgoal  # 2: gridworld colour pairs, 1: ant colours
    options = [f"cluster {c} (mostly subgoal {g}: colours "
               f"{'-'.join(str(v) for v in range(k * g, k * g + k))})"
               for c, g in enumerate(cl.cluster_subgoal)]  # fmt: skip
    c = options.index(st.selectbox("Code", options, key="steer_code"))
    at = st.slider("Force the switch at step", 0, 30 if k == 2 else 200, 0, key="steer_t")
    seed = st.number_input("Layout seed", 0, 10_000, 0, key="steer_seed")
    base, mc, config = metacontroller(run["path"])
    t0 = time.perf_counter()
    ep = episodes.steered_episode(base, mc, int(config["layer"]), cl.centroids[c], at,
                                  seed=int(seed))  # fmt: skip
    reached = ep["reached"]
    st.plotly_chart(episodes.path_figure(ep, title=f"colours entered {ep['entered']}"),
                    key="steer_grid")  # fmt: skip
    st.caption(f"after step {at} the agent completed "
               f"{'subgoal ' + str(reached) if reached >= 0 else 'no subgoal'} "
               f"(rollout {time.perf_counter() - t0:.2f} s)")  # fmt: skip


def page_commit(found: list[dict]) -> None:

    st.header("Codes that command: do the codes compose subgoals the base never chained?")
    items = [r for r in runs_of(found, "metacontroller")
             if "compose/success" in (r.get("summary") or {})]  # fmt: skip
    if not items:
        st.info("No committed metacontroller here (one refitted by `irl-lens commit`); make one "
                f"with: `{HOW_TO['commit']}`")  # fmt: skip
        return
    run = pick("Metacontroller (committed)", items, "commit_pick")
    summary = run["summary"]
    c1, c2, c3, c4 = st.columns(4)
    number(c1, "post: ideal codes, own switching", summary.get("compose/success"),
           help="the project's bar: >= 0.6", how="commit")  # fmt: skip
    number(c2, "unseen transitions, mean", summary.get("compose/unseen_mean"), how="commit")
    number(c3, "first segment with N(0, I) codes", summary.get("prior_commit/segment_0"),
           help="the RL policy's start; 1/4 is a uniform choice among 4 subgoals",
           how="commit")  # fmt: skip
    c4.metric(
        "code cells",
        shown(summary.get("commit/cells"), 0) or "none (a means refit)",
        help="k of the Voronoi refit, chosen by silhouette unless --k was given",
    )
    st.plotly_chart(composition.segments_figure(summary), key="commit_segments")
    if any(k.startswith("compose/unseen/") for k in summary):
        st.plotly_chart(composition.unseen_figure(summary), key="commit_unseen")
    st.caption(
        "An addition to the paper (`irl-lens commit`, docs/experiments-log.md): the decoder "
        "refitted on the codes it will be given, encoder and switch frozen."
    )


def number(col, label: str, value: float | None, help: str | None = None,
           how: str = "analyse") -> None:  # fmt: skip
    """``col.metric`` of ``value``; where it was not computed, says so and how to compute it
    (``HOW_TO[how]``)."""
    text = shown(value)
    if text is None:
        help = (f"not computed (too few held-out segments of each kind): re-run on a "
                f"larger clean dataset with `{HOW_TO[how]}`")  # fmt: skip
    col.metric(label, text or "not computed", help=help)


def steering_not_computed(steering) -> str | None:
    """Why the task success of ``steering`` is missing and the command to compute it, or None."""
    if shown(steering.task_success) and shown(steering.task_base_success):
        return None
    k = steering.colours_per_subgoal
    needed = sorted({int(c) // k for c in steering.task.split("-")})
    lacking = [g for g in needed if g not in steering.subgoals] or needed
    return (f"not computed: no cluster code stands for subgoal "
            f"{', '.join(str(g) for g in lacking)}, which the task needs; train longer or "
            f"re-analyse with `{HOW_TO['analyse']} --task {steering.task}`")  # fmt: skip


def page_rate_distortion(found: list[dict]) -> None:

    st.header("Rate-distortion over alpha")
    sweeps = runs_of(found, "sweep")
    if not sweeps:
        return missing("rate-distortion sweeps", "sweep")
    sweep = pick("Sweep", sweeps, "rd_pick")
    points = rd.sweep_points(sweep["path"])
    if not points:
        st.info("The sweep has no finished runs yet; re-run its command to continue it.")
        return
    st.plotly_chart(rd.rd_figure(points), key="rd_fig")

    st.caption("Per alpha: medians over seeds; aligned = share of seeds whose switch F1 >= "
               f"{rd.STAR_F1} at tolerance 1.")  # fmt: skip
    st.dataframe(pd.DataFrame([dataclasses.asdict(r) for r in rd.rd_table(points)]),
                 hide_index=True)  # fmt: skip


def page_internal_rl(found: list[dict]) -> None:

    st.header("Internal RL vs the baselines")
    items = [
        r for r in runs_of(found, "internal_rl") if (Path(r["path"]) / "metrics.jsonl").is_file()
    ]
    if not items:
        return missing("RL runs", "internal_rl")
    # success rates compare within one task only (post, and the seen-transition control)
    tasks = sorted({str(r["config"].get("task", "?")) for r in items})
    task = st.selectbox("Task", tasks, key="rl_task") if len(tasks) > 1 else tasks[0]
    paths = [r["path"] for r in items if str(r["config"].get("task", "?")) == task]
    chosen = st.multiselect("Runs to compare", paths, default=paths, key="rl_runs")
    if chosen:
        comp = rl_curves.compare_runs(chosen)
        log_x = st.toggle("log x-axis", value=False, key="rl_log")
        st.plotly_chart(rl_curves.curves_figure(comp, log_x=log_x), key="rl_fig")

        st.dataframe(pd.DataFrame(rl_curves.table(comp)), hide_index=True)
    st.subheader("Episode replay")
    with_eps = [r for r in items if (Path(r["path"]) / "episodes.json").is_file()]
    if not with_eps:
        st.info("No stored episodes yet (written at the end of a run).")
        return
    run = pick("Run", with_eps, "rl_replay_run")
    eps = json_file(Path(run["path"]) / "episodes.json")["episodes"]
    i = st.slider("Episode", 0, len(eps) - 1, 0, key="rl_ep")
    c1, c2 = st.columns([1, 1])
    c1.plotly_chart(episodes.path_figure(eps[i]), key="rl_grid")
    c2.plotly_chart(episodes.timeline_figure(eps[i]), key="rl_timeline")


def main() -> None:
    st.set_page_config(page_title="irl_lens", layout="wide")
    allowed = os.environ.get(RUNS_ENV, "runs")
    typed = st.sidebar.text_input("Runs folder", allowed, key="root")
    page = st.sidebar.radio("Page", PAGES, key="page")
    if st.sidebar.button("Rescan runs folder"):
        scan.clear()
        reports.clear()
    folder = runs_folder(typed, allowed)
    if folder is None:  # never list what lies outside the root, whoever typed the path
        st.error(
            f"`{typed}` is outside the runs root `{Path(allowed).resolve()}`: only it and its "
            f"subfolders can be browsed. Set {RUNS_ENV} to serve another folder."
        )
        return
    root = str(folder)
    found = scan(root)
    {
        "Runs": lambda: page_runs(found, root),
        "Probes": lambda: page_probes(found),
        "Controllability": lambda: page_controllability(found),
        "Switching": lambda: page_switching(found),
        "Controllers": lambda: page_controllers(found),
        "Codes that command": lambda: page_commit(found),
        "Rate-distortion": lambda: page_rate_distortion(found),
        "Internal RL": lambda: page_internal_rl(found),
    }[page]()


main()
