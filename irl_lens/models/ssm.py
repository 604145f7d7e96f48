"""Hawk-style recurrent blocks: the RG-LRU gated linear recurrence (De et al. 2024, "Griffin").

The RG-LRU reads ``x_t`` and keeps a per-channel state ``h_t``:

    r_t = sigmoid(W_a x_t + b_a)               recurrence gate
    i_t = sigmoid(W_x x_t + b_x)               input gate
    a_t = sigmoid(Lambda) ** (c * r_t)         per-channel decay in (0, 1), c = 8
    h_t = a_t * h_{t-1} + sqrt(1 - a_t**2) * (i_t * x_t)

Given the gates, the recurrence is linear in ``h``. :func:`linear_scan` runs it two ways:

* ``loop`` (the CPU's): a loop over positions of elementwise ops on ``[batch, d]`` slices
  (``unbind``, so the backward pass does not allocate a full-size gradient per slice);
* ``doubling`` (CUDA's): a Hillis-Steele scan, ``ceil(log2 T)`` rounds of whole-sequence
  elementwise ops (``h`` combines with the partial result ``2^k`` positions back), so a GPU
  launches ~10 kernels per pass instead of ~T (a loop over T = 500 ant steps is
  launch-bound there). It does ``log2 T`` times the loop's arithmetic, which a CPU pays:
  ``irl-lens bench`` reports both (``ssm_scan``).

Measured on this 2-core CPU (forward + backward, one thread), the loop beats the parallel
forms: the doubling scan took 2-13x its time (17 vs 36 ms at batch 128, T 100, d 32; 0.70 vs
9.3 s at 1024 x 100 x 256), and the ``[T, T]`` weight-matrix form (``h_t = sum_{s<=t}
exp(L_t - L_s) b_s``) took 519 ms against 8 ms at batch 128, T 100, d 32 and needs
``batch*T*T*d`` floats (10 GB for the internal-RL policy's batch of 1024 x 100 x 256, where the
loop takes 0.8 s); chunked forms of it took 4-18x the loop's time, and a log-space
``logcumsumexp`` scan 10-30x. :meth:`RGLRU.step` advances one position, for rollouts, with
the same arithmetic.

:class:`HawkBlock` wraps it the Hawk way (pre-norm; a GeLU gate branch times the recurrent
branch; output projection; then a pre-norm MLP), without Hawk's short temporal convolution,
so a step needs nothing but ``h``. Used by the metacontroller's non-causal sequence
embedder (forward and backward passes) and the internal-RL policy (causal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

_C = 8.0


SCAN_METHODS = ("auto", "loop", "doubling")


def linear_scan(
    log_a: Float[Tensor, "batch pos d"], b: Float[Tensor, "batch pos d"], method: str = "auto"
) -> Float[Tensor, "batch pos d"]:
    """``h_t = a_t h_{t-1} + b_t`` from ``h_{-1} = 0``, for every ``t`` (``log_a <= 0``).

    ``method``: ``loop``, ``doubling`` or ``auto`` (the loop on the CPU, the doubling scan on
    any other device; see the module docstring). Both give the same ``h`` up to float
    rounding.
    """
    if method not in SCAN_METHODS:
        raise ValueError(f"linear_scan method={method!r}; allowed: {', '.join(SCAN_METHODS)}")
    if method == "auto":
        method = "loop" if b.device.type == "cpu" else "doubling"
    if b.shape[1] == 0:
        return b
    if method == "doubling":
        return _doubling_scan(log_a.exp(), b)
    a_t, b_t = log_a.exp().unbind(1), b.unbind(1)
    h = b_t[0]
    out = [h]
    for a, x in zip(a_t[1:], b_t[1:], strict=True):
        h = a * h + x
        out.append(h)
    return torch.stack(out, 1)


def _doubling_scan(a: Tensor, b: Tensor) -> Tensor:
    """Hillis-Steele: after round ``k`` position ``t`` holds the recurrence over its last
    ``2^k`` positions (``b``) and the product of their decays (``a``)."""
    n, k = b.shape[1], 1
    while k < n:
        b = torch.cat([b[:, :k], torch.addcmul(b[:, k:], a[:, k:], b[:, :-k])], dim=1)
        if 2 * k < n:  # the last round needs no products
            a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    return b


class BlockDiagonalLinear(nn.Module):
    """``heads`` independent linear maps on consecutive slices of the input, outputs
    concatenated: Griffin's block-diagonal gate matrices (``heads = 1``: one full matrix)."""

    def __init__(self, d_in: int, d_out: int, heads: int) -> None:
        super().__init__()
        if d_in % heads or d_out % heads:
            raise ValueError(f"{heads} heads must divide the widths {d_in} and {d_out}")
        self.heads = heads
        bound = (heads / d_in) ** 0.5  # nn.Linear's default init, per block
        self.weight = nn.Parameter(
            torch.empty(heads, d_in // heads, d_out // heads).uniform_(-bound, bound)
        )
        self.bias = nn.Parameter(torch.empty(d_out).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        blocks = x.unflatten(-1, (self.heads, -1))  # [..., heads, d_in / heads]
        return torch.einsum("...hi,hio->...ho", blocks, self.weight).flatten(-2) + self.bias


class RGLRU(nn.Module):
    """Real-gated linear recurrent unit over ``d`` channels (see the module docstring);
    ``heads > 1``: block-diagonal gate matrices, one block per head, as in Griffin."""

    def __init__(self, d: int, heads: int = 1) -> None:
        super().__init__()
        self.d = d
        # recurrence gate r_t and input gate i_t
        self.gates = nn.Linear(d, 2 * d) if heads == 1 else _GatePair(d, heads)
        # Lambda initialised so that a = sigmoid(Lambda) ** c lies in [0.9, 0.999] (Griffin)
        a_c = torch.empty(d).uniform_(0.9**2, 0.999**2).sqrt()  # a ** c, sampled as in Griffin
        self.log_lambda_inv = nn.Parameter(torch.logit(a_c ** (1.0 / _C)))

    def _coefficients(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r, i = torch.sigmoid(self.gates(x)).chunk(2, dim=-1)
        log_a = _C * r * F.logsigmoid(self.log_lambda_inv)  # <= 0
        norm = torch.sqrt((1.0 - torch.exp(2.0 * log_a)).clamp(min=1e-12))
        return log_a, norm * (i * x)

    def forward(
        self, x: Float[Tensor, "batch pos d"], reverse: bool = False
    ) -> Float[Tensor, "batch pos d"]:
        """States ``h_t`` for every position (``reverse=True`` runs from the last position)."""
        if reverse:
            return self.forward(x.flip(1)).flip(1)
        log_a, b = self._coefficients(x)
        return linear_scan(log_a, b)

    def step(
        self, x: Float[Tensor, "batch d"], h: Float[Tensor, "batch d"] | None
    ) -> Float[Tensor, "batch d"]:
        """One position: ``h_t`` from ``x_t`` and ``h_{t-1}`` (``None``: zeros)."""
        log_a, b = self._coefficients(x)
        return b if h is None else torch.exp(log_a) * h + b


class _GatePair(nn.Module):
    """The recurrence and input gates as two block-diagonal maps, laid out as the full
    ``nn.Linear(d, 2 d)``'s output: ``[r | i]``."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.r = BlockDiagonalLinear(d, d, heads)
        self.i = BlockDiagonalLinear(d, d, heads)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.r(x), self.i(x)], dim=-1)


class HawkBlock(nn.Module):
    """Residual recurrent block + residual MLP (Hawk, without the temporal convolution);
    ``heads``: the RG-LRU's gate blocks (1: full gate matrices)."""

    def __init__(
        self, d_model: int, d_rnn: int | None = None, d_mlp: int | None = None, heads: int = 1
    ) -> None:
        super().__init__()
        d_rnn = d_rnn or d_model
        d_mlp = d_mlp or 2 * d_model
        self.norm1 = nn.LayerNorm(d_model)
        self.gate = nn.Linear(d_model, d_rnn)
        self.inp = nn.Linear(d_model, d_rnn)
        self.rnn = RGLRU(d_rnn, heads)
        self.out = nn.Linear(d_rnn, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model))

    def forward(
        self, x: Float[Tensor, "batch pos d_model"], reverse: bool = False
    ) -> Float[Tensor, "batch pos d_model"]:
        y = self.norm1(x)
        h = self.rnn(self.inp(y), reverse=reverse)
        x = x + self.out(F.gelu(self.gate(y)) * h)
        return x + self.mlp(self.norm2(x))

    def step(
        self, x: Float[Tensor, "batch d_model"], h: Float[Tensor, "batch d_rnn"] | None
    ) -> tuple[Float[Tensor, "batch d_model"], Float[Tensor, "batch d_rnn"]]:
        """One causal position: ``(output, new state)``; equals :meth:`forward` step by step."""
        y = self.norm1(x)
        h = self.rnn.step(self.inp(y), h)
        x = x + self.out(F.gelu(self.gate(y)) * h)
        return x + self.mlp(self.norm2(x)), h
