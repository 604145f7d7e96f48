"""Linear probes: a multinomial logistic regression read off residual-stream activations.

The probe of the paper's Fig 3: ``softmax(W x + b)`` on standardised residuals, fitted by
full-batch L-BFGS. :mod:`analyses.probes` collects residuals per layer and fits one
:class:`SoftmaxProbe` per layer with :func:`fit_probe`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor


@dataclass
class SoftmaxProbe:
    """A fitted multinomial logistic regression on standardised residuals."""

    weight: Float[Tensor, "n_classes d_model"]
    bias: Float[Tensor, " n_classes"]
    mean: Float[Tensor, " d_model"]
    std: Float[Tensor, " d_model"]

    def logits(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n n_classes"]:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias

    def predict_proba(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n n_classes"]:
        return torch.softmax(self.logits(x), dim=-1)

    @property
    def directions(self) -> Float[Tensor, "n_classes d_model"]:
        """The class directions in the raw residual space (``W / std``)."""
        return self.weight / self.std


def fit_probe(
    x: Float[Tensor, "n d_model"],
    y: Int[Tensor, " n"],
    n_classes: int,
    *,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> SoftmaxProbe:
    """Fit ``softmax(W x + b)`` by full-batch L-BFGS on mean cross-entropy + ``l2/2 |W|^2``.

    Features are standardised with the training mean and std first, so ``l2`` means the
    same at every layer. Deterministic on a CPU; runs on ``x``'s device.

    Example (a planted direction is recovered)::

        x = torch.randn(500, 16); y = (x[:, 3] > 0).long()
        probe = fit_probe(x, y, n_classes=2)
        (probe.predict_proba(x).argmax(-1) == y).float().mean()  # ~1.0
    """
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(
            f"probe data must be x [n, d] and y [n], got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if len(y) == 0:
        raise ValueError("probe: no labelled steps to fit on")
    x = x.float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    y = y.long()
    weight = torch.zeros(n_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y) + 0.5 * l2 * (weight**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return SoftmaxProbe(weight.detach(), bias.detach(), mean, std)
