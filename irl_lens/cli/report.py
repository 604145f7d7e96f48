"""The reproduction's ``report.md`` and ``summary.json``: each claim of the paper against
what this run measured, with the installed version and the commit it ran from."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

import irl_lens
from analyses import rate_distortion as rd

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # a type only: reproduce imports this module
    pass


def _summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


SHIPPED_EXPERT_CARD = Path(irl_lens.__file__).resolve().parent / "assets" / "ant_expert.json"
"""The shipped ant expert's card (read as JSON: importing the trainer would import MuJoCo)."""


def collect_summary(out: Path, env: str = "gridworld") -> dict:
    """The headline numbers of every stage, flat (on ant, also the shipped expert's card:
    the data commands use that expert)."""
    base = out / "base"
    flat: dict[str, float] = {}
    if env == "ant":
        for k, v in _summary(SHIPPED_EXPERT_CARD).get("summary", {}).items():
            if isinstance(v, int | float):
                flat[f"expert:{k}"] = float(v)
    for name, path in (("base", base / "summary.json"), ("probe", base / "probe/summary.json"),
                       ("controllers", base / "controllers/summary.json"),
                       ("mc", out / "mc-full/summary.json"),
                       ("commit", out / "mc-full-commit/summary.json"),
                       ("compile", out / "compile/summary.json"),
                       ("compare", out / "compare/summary.json"),
                       ("seen", out / "compare-seen/summary.json")):  # fmt: skip
        for k, v in _summary(path).items():
            if isinstance(v, int | float):
                flat[f"{name}:{k}"] = float(v)
    return flat


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def _known(*values) -> bool:
    return all(v is not None and v == v for v in values)


def _verdict(*checks: bool | None) -> str:
    """``yes`` when every check holds, ``no`` when one fails, ``n/a`` when one is unknown."""
    if any(c is None for c in checks):
        return "n/a"
    return "yes" if all(checks) else "no"


@dataclass
class Claim:
    """One row of the report: a claim of the paper, the bar we set for it, and our number."""

    claim: str
    paper: str
    target: str
    ours: str
    met: str
    figure: str


def _switch_and_code_claims(summary: dict) -> list[Claim]:
    """The metacontroller's claims: switch alignment (Fig 6) and code clustering (Fig 5)."""
    g = summary.get
    out = []
    f1, binary = g("mc:switching/f1_tol1"), g("mc:switching/binary_fraction")
    out.append(Claim(
        "beta switches at subgoal boundaries (Fig 6)", "essentially perfect, quasi-binary",
        "F1 at tolerance 1 >= 0.9, >= 90% of beta within 0.05 of 0 or 1",
        f"F1@1 {_fmt(f1)}, binary fraction {_fmt(binary)}, switches/episode "
        f"{_fmt(g('mc:switching/switches_per_episode'), 2)} (true "
        f"{_fmt(g('mc:switching/true_switches_per_episode'), 2)}); held-out action NLL "
        f"{_fmt(g('mc:discover/action_nll'))} (the base alone "
        f"{_fmt(g('mc:discover/base_action_nll'))})",
        _verdict(f1 >= 0.9 if _known(f1) else None, binary >= 0.9 if _known(binary) else None),
        "mc-full/switching_beta.html"))  # fmt: skip

    nmi = g("mc:clustering/nmi")
    steered, free = g("mc:steering/mean_steered"), g("mc:steering/mean_uncontrolled")
    out.append(Claim(
        "Latent codes mean 'go to subgoal k' (Fig 5)", "clusters by subgoal; steering works",
        "NMI >= 0.8; steering >= uncontrolled + 0.1",
        f"NMI {_fmt(nmi)}; steering {_fmt(steered)} vs uncontrolled {_fmt(free)}; a code "
        f"predicts the subgoal {_fmt(g('mc:clustering/subgoal_accuracy'))} (chance "
        f"{_fmt(g('mc:clustering/subgoal_chance'))}) and its target cell R2 "
        f"{_fmt(g('mc:clustering/target_cell_r2'))}; the subgoal before it "
        f"{_fmt(g('mc:clustering/previous_accuracy'))} (chance "
        f"{_fmt(g('mc:clustering/previous_chance'))}), yet swapping in the code learnt "
        f"after another predecessor keeps the first-3-step action accuracy at "
        f"{_fmt(g('mc:codes/swap_first3_accuracy'))} (own code "
        f"{_fmt(g('mc:codes/own_first3_accuracy'))})",
        _verdict(nmi >= 0.8 if _known(nmi) else None,
                 steered >= free + 0.1 if _known(steered, free) else None),
        "mc-full/clusters.html"))  # fmt: skip
    return out


def claims(summary: dict, n_layers: int | None, env: str = "gridworld") -> list[Claim]:
    """Each claim of the paper against the targets of the project's issues."""
    g = summary.get
    out = []
    if env == "ant":
        pre, post = g("expert:eval/pretrain_success"), g("expert:eval/post_success")
        out.append(Claim(
            "The PPO expert solves ant-pinpad (App C.1.1)", "0.8 pretraining tasks, 0.7 on 0-1-2-3",
            ">= 0.8 / >= 0.7 (mean action)",
            f"{_fmt(pre)} / {_fmt(post)} over {_fmt(g('expert:eval/episodes'), 0)} episodes each "
            "(the shipped expert's card)",
            _verdict(pre >= 0.8 if _known(pre) else None, post >= 0.7 if _known(post) else None),
            "-"))  # fmt: skip
    layer0, best = g("probe:probe/accuracy_layer_0"), g("probe:probe/best_accuracy")
    out.append(Claim(
        "Probe accuracy rises with depth (Fig 3)", "~0.3 -> ~0.5-0.6 mid-depth",
        "best >= 0.5 and >= layer 0 + 0.15",
        f"layer 0 {_fmt(layer0)} -> best {_fmt(best)} (layer "
        f"{_fmt(g('probe:probe/best_layer'), 0)})",
        _verdict(best >= 0.5 and best >= layer0 + 0.15 if _known(best, layer0) else None),
        "base/probe/probe_accuracy.html"))  # fmt: skip

    ctrl = g("controllers:controllers/best_success")
    ctrl_layer = g("controllers:controllers/best_layer")
    base_success = g("controllers:controllers/base_success")
    middle = (None if n_layers is None or not _known(ctrl_layer)
              else n_layers / 3 <= ctrl_layer <= 2 * n_layers / 3)  # fmt: skip
    out.append(Claim(
        "Supervised controllers solve the post task best at mid-depth (Fig 4)",
        "0.2-0.7 at mid-depth; base ~0",
        "best sampled >= 0.5, best layer in the middle third, base <= 0.05",
        f"best {_fmt(ctrl)} sampled / "
        f"{_fmt(g('controllers:controllers/best_success_greedy'))} greedy at layer "
        f"{_fmt(ctrl_layer, 0)} of 0..{n_layers if n_layers is not None else '?'}; base "
        f"{_fmt(base_success)}",
        _verdict(ctrl >= 0.5 if _known(ctrl) else None, middle,
                 base_success <= 0.05 if _known(base_success) else None),
        "base/controllers/controllers_success.html"))  # fmt: skip

    out += _switch_and_code_claims(summary)

    out += _commit_claims(summary)
    rl = _final_success(summary, "compare")
    bars = {"internal_rl": lambda v: v >= 0.5, "raw_rl": lambda v: v <= 0.01,
            "internal_rl_beta1": lambda v: v <= 0.05,
            "internal_rl (cotrain)": lambda v: v <= 0.05,
            "internal_rl (compile)": lambda v: v <= 0.05}  # fmt: skip
    to_half = g("compare:compare/internal_rl/episodes_to_0.5")
    out += _compile_claims(summary)
    out.append(Claim(
        "Internal RL solves the post task; baselines ~0 (Fig 8)",
        "internal RL high; raw-action, beta1, co-trained, CompILE ~0 within 1M episodes",
        "internal RL (median of seeds) >= 0.5; raw-action RL <= 0.01; beta1, cotrain, "
        "CompILE <= 0.05",
        ("; ".join(f"{m} {_fmt(v)}" for m, v in rl.items()) or "n/a")
        + (f"; internal RL reached 0.5 after {to_half:,.0f} episodes (median)"
           if _known(to_half) else ""),
        # CompILE runs on the gridworld only: where it did not run, the others decide
        _verdict(*[bar(rl[m]) if _known(rl.get(m)) else None for m, bar in bars.items()
                   if m != "internal_rl (compile)" or m in rl]),
        "compare/success_linear.html"))  # fmt: skip
    out += _seen_claims(summary)
    return out


def _final_success(summary: dict, prefix: str) -> dict[str, float]:
    """Method -> median final success of the comparison ``prefix`` (``compare``, ``seen``)."""
    return {k.split("/")[1]: v for k, v in summary.items()
            if k.startswith(f"{prefix}:") and k.endswith("/final_success")}  # fmt: skip


def _seen_claims(summary: dict) -> list[Claim]:
    """Internal RL over the metacontroller's and CompILE's codes on the control task of seen
    transitions (``compare-seen``; issue 31), when it ran: it tells a failure to compose
    (post only) from codes that cannot drive RL at all (both tasks)."""
    rl = _final_success(summary, "seen")
    if not rl:
        return []
    to_half = {m: summary.get(f"seen:compare/{m}/episodes_to_0.5") for m in rl}
    return [Claim(
        "Internal RL on a task of seen subgoal transitions (0-1-4-5-2-3-6-7-4-5-0-1), over "
        "each abstraction",
        "not in the paper (the control for post)",
        "reported side by side; no bar",
        "; ".join(f"{m} {_fmt(v)}" + (f" (0.5 after {to_half[m]:,.0f} episodes)"
                                       if _known(to_half[m]) else "")
                  for m, v in rl.items()),
        "-", "compare-seen/success_linear.html")]  # fmt: skip


def _compile_claims(summary: dict) -> list[Claim]:
    """The CompILE baseline's abstraction next to the metacontroller's (issue 31), when it
    ran: where the boundaries and latents come from is the only difference."""
    if not any(k.startswith("compile:") for k in summary):
        return []
    g = summary.get
    f1, nmi = g("compile:switching/f1_tol1"), g("compile:clustering/nmi")
    return [Claim(
        "CompILE baseline: segments and latents inferred from the raw inputs, not the "
        "residual stream (Fig 8's fourth baseline)",
        "its internal RL fails on post",
        "reported next to the metacontroller (F1@1, NMI); no bar of its own",
        f"CompILE F1@1 {_fmt(f1)}, NMI {_fmt(nmi)}, {_fmt(g('compile:segments/mean_steps'), 1)} "
        f"steps per segment, latent KL {_fmt(g('compile:compile/kl_z'), 4)} nats/step; "
        f"metacontroller F1@1 {_fmt(g('mc:switching/f1_tol1'))}, NMI "
        f"{_fmt(g('mc:clustering/nmi'))}",
        "-", "compile/summary.json")]  # fmt: skip


def _commit_claims(summary: dict) -> list[Claim]:
    """The commitment refit's claim (issue 29; an addition to the paper), when it ran."""
    if not any(k.startswith("commit:") for k in summary):
        return []
    g = summary.get
    steer = g("commit:compose/success")
    segments = [g(f"commit:compose/segment_{k}") for k in range(6)]
    prior = [g(f"commit:prior_commit/segment_{k}") for k in range(6)]
    return [Claim(
        "Codes compose subgoals the base never chained (addition: the commitment refit, "
        "`irl-lens commit`)",
        "implied by internal RL on post (Fig 8)",
        "ideal codes under the metacontroller's own switching solve post >= 0.6",
        f"{_fmt(steer)} (per segment {', '.join(_fmt(v, 2) for v in segments)}); initial "
        f"policy's codes: first segment {_fmt(prior[0])}, "
        f"{_fmt(g('commit:prior_commit/switches_per_episode'), 2)} switches/episode; "
        f"{_fmt(g('commit:commit/cells'), 0)} code cells",
        _verdict(steer >= 0.6 if _known(steer) else None),
        "mc-full-commit/summary.json")]  # fmt: skip


def _sweep_section(out: Path) -> list[str]:
    """The rate-distortion table (``--with-sweep``): empty when no run of it finished."""

    points = rd.sweep_points(out / "rd")
    if not points:
        return [""]
    return [
        "",
        "## Rate-distortion (paper Fig 7)",
        "",
        "Per variant and alpha: medians over seeds, [min, max]; F1 column: the share of seeds "
        "whose switches align with the subgoal boundaries. The paper's frozen base shows a gap "
        "in the curve where that alignment appears; co-trained runs do not. Figure: "
        "[rd/rate_distortion.html](rd/rate_distortion.html).",
        "",
        *rd.markdown_table(rd.rd_table(points)),
        "",
    ]


PACKAGE_DIR = Path(irl_lens.__file__).resolve().parent
"""The folder ``irl_lens`` is imported from (in an editable install: the checkout's)."""


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder ARGS``'s output; None when git fails or is missing."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _checkout_commit(package_dir: Path) -> str | None:
    """HEAD of the git checkout that tracks ``package_dir`` as its irl_lens package, marked
    when the checkout has uncommitted changes; None when it is not one (a plain install in a
    virtual environment inside a checkout is not)."""
    if _git(package_dir, "ls-files", "--error-unmatch", "__init__.py") is None:
        return None
    commit = _git(package_dir, "rev-parse", "HEAD")
    if not commit:
        return None
    dirty = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return f"{commit} (uncommitted changes)" if dirty else commit


def _direct_url() -> dict:
    """The install's PEP 610 record (``direct_url.json``), or ``{}``. Each distribution named
    irl-lens is tried: run from the checkout, its ``irl_lens.egg-info`` comes first and has
    none."""
    for dist in importlib.metadata.distributions(name="irl-lens"):
        text = dist.read_text("direct_url.json")
        if not text:
            continue
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            logger.warning("%s: unreadable direct_url.json", dist.metadata["Name"])
    return {}


def source_commit(package_dir: Path = PACKAGE_DIR, direct_url: dict | None = None) -> str:
    """The git commit of the running irl_lens, wherever the working folder is.

    Tried in turn: the checkout the package is imported from (an editable install, or a
    clone on ``sys.path``); the commit a ``pip install git+URL`` recorded; the folder an
    editable install records (``direct_url``: the install's PEP 610 record by default).
    """
    direct_url = _direct_url() if direct_url is None else direct_url
    commit = _checkout_commit(package_dir) or direct_url.get("vcs_info", {}).get("commit_id")
    url = direct_url.get("url", "")
    if not commit and direct_url.get("dir_info", {}).get("editable") and url.startswith("file:"):
        commit = _checkout_commit(Path(url2pathname(urlparse(url).path)) / "irl_lens")
    return commit or "unknown (not a git checkout)"


def installed_version() -> str:
    """The installed irl-lens distribution's version (from its metadata, not the source)."""
    try:
        return importlib.metadata.version("irl-lens")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"
