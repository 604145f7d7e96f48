"""Linear residual-stream controllers: ``e_hat = e + U e`` (paper Section 3, Appendix C.3).

A controller writes into the residual stream of the frozen base model at one layer.
``U`` is either low-rank, ``U = B A`` with ``B [d_model, rank]`` and ``A [rank, d_model]``
(the paper's gridworld choice, rank 16), or a full ``[d_model, d_model]`` matrix (ant).

:class:`ControllerBank` holds ``K`` such controllers, e.g. one per abstract subgoal for the
supervised controllers, where the ground-truth label picks which one acts at each
position. ``index = -1`` means "no control" (``e_hat = e``). The functional forms
:func:`apply_low_rank` and :func:`apply_full` take per-row matrices, which is what a
hypernetwork (the metacontroller's decoder ``U_t = f_hyp(z_t)``) produces.

The bank is a TransformerLens ``HookedRootModule``: ``hook_delta`` (``U e``) and
``hook_controller_out`` (``e_hat``) can be cached and patched like any base-model hook.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from irl_lens import runs
from irl_lens.models.common import DictConfig, build_seeded

logger = logging.getLogger(__name__)


def apply_low_rank(
    e: Float[Tensor, "batch pos d_model"],
    A: Float[Tensor, "*lead rank d_model"],
    B: Float[Tensor, "*lead d_model rank"],
) -> Float[Tensor, "batch pos d_model"]:
    """``e + B (A e)``; ``A``/``B`` broadcast over ``[batch, pos]`` (e.g. ``[batch, 1, r, d]``)."""
    h = torch.einsum("...rd,...d->...r", A, e)  # [batch, pos, rank]
    return e + torch.einsum("...dr,...r->...d", B, h)


def apply_full(
    e: Float[Tensor, "batch pos d_model"], U: Float[Tensor, "*lead d_model d_model"]
) -> Float[Tensor, "batch pos d_model"]:
    """``e + U e``; ``U`` broadcasts over ``[batch, pos]``."""
    return e + torch.einsum("...ij,...j->...i", U, e)


def hyper_hidden(dec: nn.Linear, z: Float[Tensor, "*lead n_z"]) -> Float[Tensor, "*lead j"]:
    """``[gelu(W z + b), 1]``: the vector a hypernetwork decoder's ``U(z)`` is linear in."""
    g = F.gelu(dec(z))
    return torch.cat([g, torch.ones_like(g[..., :1])], dim=-1)


def hyper_delta(
    module: nn.Module, e: Float[Tensor, "*lead d_model"], z: Float[Tensor, "*lead n_z"]
) -> Float[Tensor, "*lead d_model"]:
    """``U(z) e`` of the hypernetwork decoder on ``module`` (:func:`init_hyper_decoder`)
    without building ``U``: ``A(z) e = sum_j g_j (W^A_j e)`` is one matmul of ``e`` against
    every ``W^A_j`` and a weighted sum, and the same for ``B`` (or the full ``U``)."""
    g = hyper_hidden(module.dec, z)  # [*lead, j]
    if getattr(module, "dec_U", None) is not None:
        per_j = torch.einsum("jab,...b->...ja", module.dec_U, e)  # [*lead, j, d]
        return torch.einsum("...j,...ja->...a", g, per_j)
    ae = torch.einsum("jrd,...d->...jr", module.dec_A, e)  # W^A_j e: [*lead, j, r]
    v = torch.einsum("...j,...jr->...r", g, ae)  # A(z) e: [*lead, r]
    gv = g.unsqueeze(-1) * v.unsqueeze(-2)  # [*lead, j, r]
    return torch.einsum("...jr,jdr->...d", gv, module.dec_B)  # B(z) A(z) e


def hyper_matrices(module: nn.Module, z: Float[Tensor, "*lead n_z"]) -> Tensor:
    """``U(z)`` of the hypernetwork decoder on ``module``, built explicitly (analyses and
    tests; training uses :func:`hyper_delta`)."""
    g = hyper_hidden(module.dec, z)
    if getattr(module, "dec_U", None) is not None:
        return hyper_full(g, module.dec_U)
    a, b = hyper_factors(g, module.dec_A, module.dec_B)
    return b @ a


def init_hyper_decoder(
    module: nn.Module, n_z: int, d_dec: int, d_model: int, rank: int | None
) -> None:
    """Give ``module`` a hypernetwork decoder: ``dec`` (``n_z -> d_dec``), then ``dec_U``
    (full) or ``dec_A``/``dec_B`` (rank ``rank``) over ``j = d_dec + 1`` basis matrices.
    ``B`` (or ``U``) starts at zero, so a fresh decoder writes nothing."""
    module.dec = nn.Linear(n_z, d_dec)
    j, d = d_dec + 1, d_model
    if rank is None:
        module.dec_U = nn.Parameter(torch.zeros(j, d, d))
    else:
        module.dec_A = nn.Parameter(torch.randn(j, rank, d) * (d**-0.5) * (j**-0.5))
        module.dec_B = nn.Parameter(torch.zeros(j, d, rank))


def hyper_full(
    g: Float[Tensor, "*lead j"], U: Float[Tensor, "j d_model d_model"]
) -> Float[Tensor, "*lead d_model d_model"]:
    """``U(z) = sum_j g_j U_j`` of a full-matrix hypernetwork decoder."""
    return torch.einsum("...j,jab->...ab", g, U)


def hyper_factors(
    g: Float[Tensor, "*lead j"],
    A: Float[Tensor, "j rank d_model"],
    B: Float[Tensor, "j d_model rank"],
) -> tuple[Float[Tensor, "*lead rank d_model"], Float[Tensor, "*lead d_model rank"]]:
    """``(A(z), B(z))`` of a low-rank hypernetwork decoder: ``sum_j g_j A_j``, ``sum_j g_j B_j``."""
    return torch.einsum("...j,jrd->...rd", g, A), torch.einsum("...j,jdr->...dr", g, B)


@dataclass
class ControllerConfig(DictConfig):
    """Shape of a :class:`ControllerBank`."""

    d_model: int
    """Width of the residual stream it writes into."""
    n_controllers: int = 1
    """Number of controllers ``K`` (one per subgoal for supervised controllers)."""
    rank: int | None = 16
    """Rank of ``U = B A``; ``None`` for a full ``[d_model, d_model]`` matrix."""
    init_std: float | None = None
    """Std of ``A``'s initial entries (default ``1/sqrt(d_model)``). ``B`` (or the full
    ``U``) starts at zero, so a fresh controller is the identity map and the controlled
    model starts out as the base model."""
    hypernetwork: bool = False
    """Appendix C.3's exact form: controller ``k`` is the code ``z = onehot(k)`` (``n_z``
    floats) fed to a hypernetwork decoder shaped like the metacontroller's
    (:func:`hyper_hidden`, then ``U(z)`` linear in it), instead of its own matrices."""
    n_z: int = 8
    """Hypernetwork only: code size (metacontroller default; needs ``n_controllers <= n_z``)."""
    d_dec: int = 32
    """Hypernetwork only: decoder hidden width (metacontroller default)."""

    def __post_init__(self) -> None:
        runs.check_finite_fields(self)
        if self.d_model < 1:
            raise ValueError(f"ControllerConfig.d_model={self.d_model!r} must be >= 1")
        if self.n_controllers < 1:
            raise ValueError(f"ControllerConfig.n_controllers={self.n_controllers!r} must be >= 1")
        if self.rank is not None and not 1 <= self.rank <= self.d_model:
            raise ValueError(
                f"ControllerConfig.rank={self.rank!r}: use 1..d_model "
                f"({self.d_model}) or None for a full matrix"
            )
        if self.init_std is not None and self.init_std < 0:
            raise ValueError(f"ControllerConfig.init_std={self.init_std!r} must be >= 0")
        if self.hypernetwork and not self.n_controllers <= self.n_z:
            raise ValueError(
                f"ControllerConfig.n_z={self.n_z!r}: a hypernetwork bank needs n_z >= "
                f"n_controllers ({self.n_controllers}), one one-hot code each"
            )
        if self.hypernetwork and self.d_dec < 1:
            raise ValueError(f"ControllerConfig.d_dec={self.d_dec!r} must be >= 1")


class ControllerBank(HookedRootModule):
    """``K`` linear controllers ``e -> e + U_k e``, one picked per position by ``index``.

    ``forward(e, index)``: ``index`` is an int (every position), ``[batch]`` (per row) or
    ``[batch, pos]`` (per position); ``-1`` leaves ``e`` unchanged. :meth:`select` binds an
    index and returns a plain ``e -> e_hat`` controller for :func:`irl_lens.hooks.intervene`
    or the rollout engine.
    """

    def __init__(self, cfg: ControllerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, d = cfg.n_controllers, cfg.d_model
        if cfg.hypernetwork:  # the metacontroller decoder's shape and initialisation
            init_hyper_decoder(self, cfg.n_z, cfg.d_dec, d, cfg.rank)
            self.register_buffer("codes", torch.eye(k, cfg.n_z), persistent=False)
        elif cfg.rank is None:
            self.U = nn.Parameter(torch.zeros(k, d, d))  # [n_controllers, d_model, d_model]
        else:
            std = cfg.init_std if cfg.init_std is not None else d**-0.5
            self.A = nn.Parameter(torch.randn(k, cfg.rank, d) * std)  # [n_controllers, rank, d]
            self.B = nn.Parameter(torch.zeros(k, d, cfg.rank))  # [n_controllers, d, rank]
        self.hook_delta = HookPoint()  # [batch, pos, d_model]
        self.hook_controller_out = HookPoint()  # [batch, pos, d_model]
        self.setup()

    @property
    def n_controllers(self) -> int:
        return self.cfg.n_controllers

    def factors(self) -> tuple[Tensor, ...]:
        """``(U,)`` (full) or ``(A, B)`` (low rank) of every controller, ``[n_controllers, ...]``;
        a hypernetwork bank decodes them from its one-hot codes."""
        if not self.cfg.hypernetwork:
            return (self.U,) if self.cfg.rank is None else (self.A, self.B)
        g = hyper_hidden(self.dec, self.codes)  # [n_controllers, j]
        if self.cfg.rank is None:
            return (hyper_full(g, self.dec_U),)
        return hyper_factors(g, self.dec_A, self.dec_B)

    def matrices(self) -> Float[Tensor, "n_controllers d_model d_model"]:
        """The full ``U_k`` of every controller (``B_k A_k`` for low rank)."""
        f = self.factors()
        return f[0] if len(f) == 1 else f[1] @ f[0]

    def delta(
        self,
        e: Float[Tensor, "batch pos d_model"],
        k: int,
        factors: tuple[Tensor, ...] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """``U_k e`` for one controller ``k`` (``factors``: :meth:`factors`, if already built)."""
        f = self.factors() if factors is None else factors
        if len(f) == 1:
            return e @ f[0][k].T
        return (e @ f[0][k].T) @ f[1][k].T

    def forward(
        self,
        e: Float[Tensor, "batch pos d_model"],
        index: int | Int[Tensor, " batch"] | Int[Tensor, "batch pos"] = 0,
    ) -> Float[Tensor, "batch pos d_model"]:
        if e.ndim != 3 or e.shape[-1] != self.cfg.d_model:
            raise ValueError(
                f"controller input must be [batch, pos, {self.cfg.d_model}], got {tuple(e.shape)}"
            )
        if isinstance(index, int):
            if not -1 <= index < self.n_controllers:
                raise ValueError(
                    f"controller index {index} out of range -1..{self.n_controllers - 1}"
                )
            delta = torch.zeros_like(e) if index < 0 else self.delta(e, index)
        else:
            idx = index.to(e.device).long()
            if idx.shape not in (e.shape[:1], e.shape[:2]):
                raise ValueError(
                    f"controller index shape {tuple(index.shape)} does not match "
                    f"residual [batch] or [batch, pos] = {tuple(e.shape[:2])}"
                )
            if idx.numel() and (idx.min() < -1 or idx.max() >= self.n_controllers):
                raise ValueError(
                    f"controller index values must lie in -1..{self.n_controllers - 1}"
                )
            if idx.ndim == 1:
                idx = idx[:, None].expand(e.shape[0], e.shape[1])
            # One small matmul per controller over all positions, then pick per position:
            # K is tiny (4 subgoals), and this avoids gathering a [batch, pos, d, r] tensor.
            delta = torch.zeros_like(e)
            factors = self.factors()
            for k in range(self.n_controllers):
                sel = (idx == k).unsqueeze(-1)  # [batch, pos, 1]
                delta = torch.where(sel, self.delta(e, k, factors), delta)
        delta = self.hook_delta(delta)  # [batch, pos, d_model]
        return self.hook_controller_out(e + delta)  # [batch, pos, d_model]

    def select(self, index: int | Tensor):
        """A controller ``e -> self(e, index)`` with ``index`` bound."""
        return functools.partial(self.forward, index=index)


def build_controller_bank(cfg: ControllerConfig, seed: int = 0) -> ControllerBank:
    """A :class:`ControllerBank` with a reproducible initialisation (global RNG untouched)."""
    return build_seeded(lambda: ControllerBank(cfg), seed)
