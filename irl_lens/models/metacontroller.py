"""The metacontroller: discovers when to switch and which controller to write (paper Section 3).

It reads the base model's residual stream ``e_1:T`` at one layer ``l`` and writes
``e_hat_t = e_t + U_t e_t`` back (through :func:`irl_lens.hooks.intervene`). Modules
(defaults from Table A9):

================================  ================================================================
internal sequence embedder        ``s = f_emb(e_1:T)``: one vector summarising the whole sequence
                                  (RG-LRU passes both ways), ``n_s = 32``; training only
                                  (optionally reading another layer: ``embed_layer``)
history                           ``h_t = GRU(e_t, h_{t-1})``, ``n_h = 32``
controller encoder                ``mu_t, log sigma_t^2 = f_enc(e_t, h_{t-1}, s_t)``, hidden 64;
                                  proposal ``z~_t = mu_t + sigma_t * eps``, ``n_z = 8``
switching unit (causal)           ``beta_t = f_switch(e_t, h_{t-1}, z_{t-1})`` in ``[0, 1]``,
                                  reading the *integrated* ``z_{t-1}``
temporal integration              ``z_t = beta_t z~_t + (1 - beta_t) z_{t-1}``, ``z_{-1} = 0``
decoder (hypernetwork)            ``U_t = f_hyp(z_t)``, hidden 32, low rank 16 (``U = B A``) or full
================================  ================================================================

``beta`` is a sigmoid (``switch="sigmoid"``) or, while training, a relaxed Bernoulli
(``switch="gumbel"``: logistic noise added to the logit, divided by a temperature).

Every quantity a researcher may want to read is a TransformerLens ``HookPoint``
(``hook_seq_embedding``, ``hook_history``, ``hook_latent_mu``, ``hook_latent_logvar``,
``hook_latent_proposal``, ``hook_switch_gate``, ``hook_latent_z``, ``hook_controller_delta``,
``hook_controller_out``), so ``run_with_cache`` and ``run_with_hooks`` work on it.

**Decoder without materialising U.** ``A_t`` and ``B_t`` are linear in the decoder's hidden
vector ``g_t`` (plus a bias), ``A_t = sum_j g_tj W^A_j``. So ``A_t e_t = sum_j g_tj (W^A_j e_t)``
is one matmul of ``e`` against all ``W^A_j`` followed by a weighted sum, and the same for
``B_t``; the ``[pos, d_model, rank]`` matrices are never built. :meth:`Metacontroller.matrices`
builds ``U_t`` explicitly, for analyses and for the test that checks ``e + U e``.

**Stepping.** Rollouts (prior sampling, internal RL) drive the causal part one position at
a time with :meth:`Metacontroller.step`, which gives the same numbers as :meth:`forward`
with the same proposals (tested); the non-causal embedder is not used there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from irl_lens import runs
from irl_lens.hooks import check_layer, n_layers_of
from irl_lens.models.base import load_base_model
from irl_lens.models.common import DictConfig, build_seeded, noise
from irl_lens.models.controller import (
    hyper_delta,
    hyper_hidden,
    hyper_matrices,
    init_hyper_decoder,
)
from irl_lens.models.ssm import RGLRU

SWITCHES = ("sigmoid", "gumbel")


@dataclass
class MetacontrollerConfig(DictConfig):
    """Sizes of a :class:`Metacontroller` (defaults: paper Table A9, gridworld)."""

    d_model: int
    """Width of the base model's residual stream."""
    n_z: int = 8
    """Latent code size."""
    n_h: int = 32
    """GRU history size."""
    n_s: int = 32
    """Internal sequence embedding size."""
    d_enc: int = 64
    """Hidden width of the controller encoder and the switching unit."""
    d_dec: int = 32
    """Hidden width of the hypernetwork decoder."""
    rank: int | None = 16
    """Rank of ``U_t = B_t A_t``; ``None`` for a full matrix (ant)."""
    switch: str = "sigmoid"
    """``sigmoid`` or ``gumbel`` (relaxed Bernoulli while training)."""
    gumbel_temperature: float = 0.5
    """Temperature of the relaxed Bernoulli switch."""
    switch_bias_init: float = 0.0
    """Initial bias of the switching unit's logit (0: beta starts near 0.5)."""
    embed_layer: int | None = None
    """Layer of the base whose residuals the non-causal sequence embedder reads, from the
    base alone (uncontrolled); ``None``: the control layer, as in the paper. Reading the
    layer where the base's subgoal belief lives is a CPU-budget aid (issue 32, see
    :func:`embedder_input`); only the training-time posterior changes, rollouts never use
    the embedder."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        for name in ("d_model", "n_z", "n_h", "n_s", "d_enc", "d_dec"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"MetacontrollerConfig.{name}={getattr(self, name)!r} must be >= 1"
                )
        if self.rank is not None and not 1 <= self.rank <= self.d_model:
            raise ValueError(
                f"MetacontrollerConfig.rank={self.rank!r}: use 1..d_model ({self.d_model}) "
                "or None for a full matrix"
            )
        if self.switch not in SWITCHES:
            raise ValueError(
                f"MetacontrollerConfig.switch={self.switch!r}; allowed: {', '.join(SWITCHES)}"
            )
        if not self.gumbel_temperature > 0:
            raise ValueError(
                f"MetacontrollerConfig.gumbel_temperature={self.gumbel_temperature!r} must be > 0"
            )
        if self.embed_layer is not None and self.embed_layer < 0:
            raise ValueError(
                f"MetacontrollerConfig.embed_layer={self.embed_layer!r}: use a layer >= 0 "
                "or None for the control layer"
            )


@dataclass
class MetacontrollerOutput:
    """Everything one :meth:`Metacontroller.forward` computed, per position."""

    e_hat: Float[Tensor, "batch pos d_model"]
    beta: Float[Tensor, "batch pos"]
    beta_logit: Float[Tensor, "batch pos"]
    mu: Float[Tensor, "batch pos n_z"]
    logvar: Float[Tensor, "batch pos n_z"]
    z_tilde: Float[Tensor, "batch pos n_z"]
    z: Float[Tensor, "batch pos n_z"]
    kl: Float[Tensor, "batch pos"]
    """``KL(N(mu_t, Sigma_t) || N(0, I))`` per position (summed over ``n_z``)."""


@dataclass
class StepCarry:
    """The causal state a rollout carries between positions: ``h_{t-1}`` and ``z_{t-1}``."""

    h: Float[Tensor, "batch n_h"]
    z: Float[Tensor, "batch n_z"]

    def select(self, rows: Tensor) -> StepCarry:
        return StepCarry(self.h[rows], self.z[rows])


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag exp(logvar)) || N(0, I))`` summed over the last dimension."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


class Metacontroller(HookedRootModule):
    """See the module docstring. ``forward(e, mask)`` runs a whole batch of sequences."""

    def __init__(self, cfg: MetacontrollerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, nz, nh, ns = cfg.d_model, cfg.n_z, cfg.n_h, cfg.n_s
        # internal sequence embedder (non-causal)
        self.emb_in = nn.Linear(d, ns)
        self.emb_fwd = RGLRU(ns)
        self.emb_bwd = RGLRU(ns)
        self.emb_out = nn.Linear(2 * ns, ns)
        # history
        self.gru = nn.GRU(d, nh, batch_first=True)
        # controller encoder
        self.enc = nn.Sequential(nn.Linear(d + nh + ns, cfg.d_enc), nn.GELU())
        self.enc_mu = nn.Linear(cfg.d_enc, nz)
        self.enc_logvar = nn.Linear(cfg.d_enc, nz)
        # switching unit: the (e, h) part of its first layer is computed for all positions
        # at once; only the z_{t-1} part is inside the loop over time
        self.switch_eh = nn.Linear(d + nh, cfg.d_enc)
        self.switch_z = nn.Linear(nz, cfg.d_enc, bias=False)
        self.switch_out = nn.Linear(cfg.d_enc, 1)
        nn.init.constant_(self.switch_out.bias, cfg.switch_bias_init)
        # hypernetwork decoder: g = gelu(W z + b), then U linear in [g, 1]
        init_hyper_decoder(self, nz, cfg.d_dec, d, cfg.rank)
        for name in (
            "seq_embedding",
            "history",
            "latent_mu",
            "latent_logvar",
            "latent_proposal",
            "switch_gate",
            "latent_z",
            "controller_delta",
            "controller_out",
        ):
            setattr(self, f"hook_{name}", HookPoint())
        self.setup()

    # ------------------------------------------------------------------ pieces
    def sequence_embedding(
        self, e: Float[Tensor, "batch pos d_model"], mask: Float[Tensor, "batch pos"]
    ) -> Float[Tensor, "batch n_s"]:
        """``s(e_1:T)``: one vector per sequence, from RG-LRU passes in both directions.

        The forward pass's state at the last real position and the backward pass's state at
        position 0 both summarise the whole (unpadded) sequence. One vector of ``n_s`` floats
        for all ``T`` steps is a bottleneck on purpose: it can carry the episode's subgoal
        sequence, but not every future action (a per-step embedding would hand the encoder
        the next observation, hence the next action, and the codes would encode actions).
        """
        x = self.emb_in(e) * mask.unsqueeze(-1)  # padding contributes nothing either way
        last = (mask.sum(1).long() - 1).clamp(min=0)  # [batch]
        rows = torch.arange(e.shape[0], device=e.device)
        forward_end = self.emb_fwd(x)[rows, last]  # [batch, n_s]
        backward_start = self.emb_bwd(x, reverse=True)[:, 0]  # [batch, n_s]
        s = self.emb_out(torch.cat([forward_end, backward_start], dim=-1))
        return self.hook_seq_embedding(s)

    def _embedded(self, e: Tensor, e_embed: Tensor | None) -> Tensor:
        """The residuals the sequence embedder reads: ``e`` itself (the paper), or the
        ``cfg.embed_layer`` residuals the caller passes (checked)."""
        if self.cfg.embed_layer is None:
            if e_embed is not None:
                raise ValueError(
                    "e_embed given, but this metacontroller's embedder reads the control "
                    "layer (MetacontrollerConfig.embed_layer is None)"
                )
            return e
        if e_embed is None:
            raise ValueError(
                f"this metacontroller's sequence embedder reads layer {self.cfg.embed_layer}: "
                "pass that layer's residuals as e_embed= (embedder_input computes them)"
            )
        if e_embed.shape != e.shape:
            raise ValueError(f"e_embed has shape {tuple(e_embed.shape)}, expected {tuple(e.shape)}")
        return e_embed

    def decoder_hidden(self, z: Float[Tensor, "*lead n_z"]) -> Float[Tensor, "*lead j"]:
        """``[g(z), 1]``: the vector ``U`` is linear in."""
        return hyper_hidden(self.dec, z)

    def delta(
        self, e: Float[Tensor, "*lead d_model"], z: Float[Tensor, "*lead n_z"]
    ) -> Float[Tensor, "*lead d_model"]:
        """``U(z) e`` without building ``U`` (see the module docstring)."""
        return hyper_delta(self, e, z)

    def matrices(self, z: Float[Tensor, "*lead n_z"]) -> Float[Tensor, "*lead d_model d_model"]:
        """``U(z)`` built explicitly (for analyses and tests; training never builds it)."""
        return hyper_matrices(self, z)

    def apply_code(
        self, e: Float[Tensor, "*lead d_model"], z: Float[Tensor, "*lead n_z"]
    ) -> Float[Tensor, "*lead d_model"]:
        """``e + U(z) e`` (through the controller hooks)."""
        delta = self.hook_controller_delta(self.delta(e, z))
        return self.hook_controller_out(e + delta)

    def _switch(
        self, eh_part: Tensor, z_prev: Tensor, sample: bool, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        logit = self.switch_out(F.gelu(eh_part + self.switch_z(z_prev))).squeeze(-1)
        if self.cfg.switch == "gumbel" and sample:
            u = noise("rand", logit.shape, generator, logit.device)
            u = u.clamp(1e-6, 1 - 1e-6)
            logistic = torch.log(u) - torch.log1p(-u)  # logistic(0, 1)
            return torch.sigmoid((logit + logistic) / self.cfg.gumbel_temperature), logit
        return torch.sigmoid(logit), logit

    # ------------------------------------------------------------------ whole sequences
    def forward(  # type: ignore[override]
        self,
        e: Float[Tensor, "batch pos d_model"],
        mask: Float[Tensor, "batch pos"] | Bool[Tensor, "batch pos"] | None = None,
        *,
        sample: bool = True,
        beta_override: float | None = None,
        generator: torch.Generator | None = None,
        e_embed: Float[Tensor, "batch pos d_model"] | None = None,
    ) -> MetacontrollerOutput:
        """Run the metacontroller over whole sequences and return ``e_hat`` and its internals.

        ``sample=False`` uses ``z~_t = mu_t`` (and a noiseless switch); ``beta_override``
        forces ``beta_t`` to that value (the ``beta = 1`` ablation). ``e_embed``: what the
        sequence embedder reads when ``cfg.embed_layer`` is set (:func:`embedder_input`).
        """
        if e.ndim != 3 or e.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"metacontroller input must be [batch, pos, {self.cfg.d_model}], "
                f"got {tuple(e.shape)}"
            )
        b, t, _ = e.shape
        mask = torch.ones(b, t, device=e.device) if mask is None else mask.to(e.dtype)
        s = self.sequence_embedding(self._embedded(e, e_embed), mask)[:, None].expand(b, t, -1)
        h_all, _ = self.gru(e)  # h_t for t = 0..T-1
        h_all = self.hook_history(h_all)
        h_prev = torch.cat([torch.zeros_like(h_all[:, :1]), h_all[:, :-1]], dim=1)  # h_{t-1}
        hid = self.enc(torch.cat([e, h_prev, s], dim=-1))
        mu = self.hook_latent_mu(self.enc_mu(hid))
        logvar = self.hook_latent_logvar(self.enc_logvar(hid).clamp(-10.0, 10.0))
        if sample:
            eps = noise("randn", mu.shape, generator, mu.device)
            z_tilde = mu + torch.exp(0.5 * logvar) * eps
        else:
            z_tilde = mu
        z_tilde = self.hook_latent_proposal(z_tilde)
        eh = self.switch_eh(torch.cat([e, h_prev], dim=-1))  # [b, t, d_enc]
        z_prev = torch.zeros(b, self.cfg.n_z, device=e.device, dtype=e.dtype)
        betas, logits, zs = [], [], []
        for i in range(t):  # beta_t depends on z_{t-1}: the one sequential part
            beta, logit = self._switch(eh[:, i], z_prev, sample, generator)
            if beta_override is not None:
                beta = torch.full_like(beta, float(beta_override))
            z_prev = beta.unsqueeze(-1) * z_tilde[:, i] + (1.0 - beta.unsqueeze(-1)) * z_prev
            betas.append(beta)
            logits.append(logit)
            zs.append(z_prev)
        beta = self.hook_switch_gate(torch.stack(betas, dim=1))
        z = self.hook_latent_z(torch.stack(zs, dim=1))
        e_hat = self.apply_code(e, z)
        return MetacontrollerOutput(
            e_hat=e_hat,
            beta=beta,
            beta_logit=torch.stack(logits, dim=1),
            mu=mu,
            logvar=logvar,
            z_tilde=z_tilde,
            z=z,
            kl=gaussian_kl(mu, logvar),
        )

    # ------------------------------------------------------------------ one step (rollouts)
    def initial_carry(self, n: int, device=None) -> StepCarry:
        """``h_{-1} = 0`` and ``z_{-1} = 0`` for ``n`` rollouts."""
        dev = device or self.dec.weight.device
        return StepCarry(
            torch.zeros(n, self.cfg.n_h, device=dev), torch.zeros(n, self.cfg.n_z, device=dev)
        )

    def switch_probability(
        self, e: Float[Tensor, "batch d_model"], carry: StepCarry
    ) -> Float[Tensor, " batch"]:
        """``beta_t = f_switch(e_t, h_{t-1}, z_{t-1})`` (noiseless) for one position."""
        eh = self.switch_eh(torch.cat([e, carry.h], dim=-1))
        return self._switch(eh, carry.z, sample=False, generator=None)[0]

    def step(
        self,
        e: Float[Tensor, "batch d_model"],
        carry: StepCarry,
        z_tilde: Float[Tensor, "batch n_z"],
        beta: Float[Tensor, " batch"] | None = None,
    ) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, " batch"], StepCarry]:
        """One causal position with a given proposal ``z~_t`` (from the prior, a policy, ...).

        Returns ``(e_hat_t, beta_t, carry_t)``. ``beta`` overrides the switching unit (e.g. a
        thresholded, binary switch). Equals :meth:`forward` position by position.
        """
        if beta is None:
            beta = self.switch_probability(e, carry)
        z = beta.unsqueeze(-1) * z_tilde + (1.0 - beta.unsqueeze(-1)) * carry.z
        h = self.gru_step(e, carry.h)
        e_hat = self.apply_code(e, z)
        return e_hat, beta, StepCarry(h, z)

    def gru_step(self, e: Float[Tensor, "batch d_model"], h: Float[Tensor, "batch n_h"]) -> Tensor:
        """``h_t = GRU(e_t, h_{t-1})`` with the weights of :attr:`gru`."""
        g = self.gru
        return torch.gru_cell(e, h, g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0)

    def encode(
        self, e: Float[Tensor, "batch d_model"], carry: StepCarry, s: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(mu_t, logvar_t)`` for one position given the sequence embedding ``s``."""
        hid = self.enc(torch.cat([e, carry.h, s], dim=-1))
        return self.enc_mu(hid), self.enc_logvar(hid).clamp(-10.0, 10.0)


def embedder_input(
    base: HookedRootModule, mc: Metacontroller, inputs: Any
) -> Float[Tensor, "batch pos d_model"] | None:
    """What ``mc``'s sequence embedder reads, for ``mc(e, mask, e_embed=...)``: ``None`` when
    it reads the control layer (the paper), else the base's own residuals at
    ``mc.cfg.embed_layer`` for ``inputs`` (no controller in them: the base alone).

    Why an aid (issue 32, ``docs/experiments-log.md``): on ant the base's belief about the
    target colour lives above the control layer (probes rise with depth). With the embedder
    on the control layer the codes never started carrying the target on the CPU budget's
    clean data; reading the top layer, they did. The embedder is non-causal and used only in
    self-supervised training, so the causal path (switch, decoder, rollouts, internal RL)
    is the paper's either way."""
    layer = mc.cfg.embed_layer
    if layer is None:
        return None
    return base(inputs, stop_at_layer=check_embed_layer(layer, n_layers_of(base)))


def check_embed_layer(layer: int, n_layers: int) -> int:
    """``MetacontrollerConfig.embed_layer`` checked against the base's depth."""
    try:
        return check_layer(layer, n_layers)
    except ValueError as err:
        raise ValueError(f"embed_layer: {err}") from None


def posterior(
    base: HookedRootModule, mc: Metacontroller, layer: int, inputs: Any, mask: Tensor,
    **kwargs: Any,
) -> MetacontrollerOutput:  # fmt: skip
    """``mc`` over the base's own residuals at ``layer`` for ``inputs`` (nothing written back):
    the codes, gates and posterior of whole recorded episodes, for analyses. ``kwargs`` go to
    :meth:`Metacontroller.forward` (``sample=False`` for the posterior means)."""
    e = base(inputs, stop_at_layer=layer)
    return mc(e, mask, e_embed=embedder_input(base, mc, inputs), **kwargs)


def build_metacontroller(cfg: MetacontrollerConfig, seed: int = 0) -> Metacontroller:
    """A :class:`Metacontroller` with a reproducible initialisation (global RNG untouched)."""
    return build_seeded(lambda: Metacontroller(cfg), seed)


def decoder_parameters(mc: Metacontroller) -> list[tuple[str, nn.Parameter]]:
    """The hypernetwork decoder's parameters (``dec`` and ``dec_U`` or ``dec_A``/``dec_B``):
    what a commitment refit (:mod:`irl_lens.train.commit`) trains."""
    return [(n, p) for n, p in mc.named_parameters() if n.split(".")[0] in _DECODER]


_DECODER = ("dec", "dec_U", "dec_A", "dec_B")


def integrate_codes(
    z_tilde: Float[Tensor, "batch pos n_z"], beta: Float[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos n_z"]:
    """The switching recursion for given gates: ``z_t = beta_t z~_t + (1 - beta_t) z_{t-1}``,
    ``z_{-1} = 0`` (the same update :meth:`Metacontroller.forward` makes, where ``beta_t``
    itself depends on ``z_{t-1}``; here the gates are fixed, e.g. from the posterior means).

    Example::

        z = integrate_codes(proposals, mo.beta)  # codes held between switches
    """
    z_prev = torch.zeros_like(z_tilde[:, 0])
    zs = []
    for t in range(z_tilde.shape[1]):  # a linear recurrence over at most T = 100 steps
        b = beta[:, t, None]
        z_prev = b * z_tilde[:, t] + (1.0 - b) * z_prev
        zs.append(z_prev)
    return torch.stack(zs, dim=1)


KIND = "metacontroller"
"""The ``kind`` in a metacontroller folder's ``config.json``."""
WEIGHTS = "metacontroller.safetensors"


@dataclass
class LoadedMetacontroller:
    """A metacontroller and the base model it writes into, as :func:`load_metacontroller`
    returns them. Unpacks like the tuple ``(base, mc, config)``."""

    base: HookedRootModule
    """The base model (ours or the user's own ``HookedTransformer``), eval mode."""
    mc: Metacontroller
    layer: int
    """The residual-stream layer it reads and writes (:func:`irl_lens.hooks.resid_hook_name`)."""
    config: dict[str, Any] = field(repr=False)
    """The folder's ``config.json``."""

    def __iter__(self) -> Iterator[Any]:
        return iter((self.base, self.mc, self.config))

    def posterior(self, inputs: Any, mask: Tensor, **kwargs: Any) -> MetacontrollerOutput:
        """:func:`posterior` of this metacontroller on its base at its layer."""
        return posterior(self.base, self.mc, self.layer, inputs, mask, **kwargs)


def save_metacontroller(mc: Metacontroller, out: str | Path, layer: int, **extra: Any) -> Path:
    """Write a metacontroller folder (``config.json`` + weights) that
    :func:`load_metacontroller` reads back, e.g. one trained on a user's own model with
    :func:`irl_lens.train.discover.fit_metacontroller`. ``extra`` keys go into the config.

    Example::

        save_metacontroller(mc, "runs/my-mc", layer=1)
        load_metacontroller("runs/my-mc", base=my_model)
    """
    out = runs.check_output(out, KIND)
    config = {
        "kind": KIND,
        "version": runs.RUN_VERSION,
        "layer": int(layer),
        "metacontroller": mc.cfg.to_dict(),
        "base_run": None,
        "train": {"variant": "full"},
    } | extra
    with runs.staged(out) as tmp:
        runs.write_json(tmp / "config.json", config)
        runs.save_weights(mc, tmp / WEIGHTS)
    return out


def load_metacontroller(
    path: str | Path, device: str = "cpu", base: HookedRootModule | None = None
) -> LoadedMetacontroller:
    """Rebuild a metacontroller from its folder, with the base model it writes into.

    ``base``: attach to this model instead of the folder's own base run (any TransformerLens
    model whose residual width is the metacontroller's ``d_model``). Without it the base
    comes from the folder's ``base_run`` (found relative to the folder, or by its absolute
    path, and checked by its weights' SHA-256); ``cotrain`` folders carry their co-trained
    base weights.

    Example::

        loaded = load_metacontroller("runs/demo/mc-full")
        with intervene(loaded.base, loaded.layer, lambda e: loaded.mc(e).e_hat):
            out = loaded.base(obs)
    """
    path = Path(path)
    config = runs.read_json(path / "config.json", "metacontroller config")
    if config.get("kind") != KIND:
        raise runs.RunError(f"{path} is a {config.get('kind')!r} folder, not {KIND!r}")
    try:
        mc_cfg = MetacontrollerConfig.from_dict(config["metacontroller"])
        layer = int(config["layer"])
        variant = config["train"]["variant"]
    except (KeyError, TypeError, ValueError) as e:
        raise runs.RunError(f"{path}/config.json: bad metacontroller config ({e})") from None
    if not (path / WEIGHTS).is_file():
        raise runs.RunError(
            f"{path} has no {WEIGHTS}: training did not finish; continue it with: "
            f"irl-lens discover {config.get('base_run')} --out {path} --resume"
        )
    if base is None:
        if not config.get("base_run"):
            raise runs.RunError(f"{path} names no base run: pass the model it was trained on")
        base = load_base_model(runs.resolve_ref(config, "base_run", path))
        if variant == "cotrain":
            runs.load_weights(base, path / "base.safetensors")
        base = base.to(device, print_details=False)
    width = getattr(getattr(base, "cfg", None), "d_model", mc_cfg.d_model)
    if width != mc_cfg.d_model:
        raise ValueError(f"{path}: metacontroller d_model {mc_cfg.d_model} != base d_model {width}")
    mc = Metacontroller(mc_cfg)
    runs.load_weights(mc, path / WEIGHTS)
    return LoadedMetacontroller(base.eval(), mc.to(device).eval(), layer, config)
