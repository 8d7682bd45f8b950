"""Fitting the weights with which the priors' candidate scores join the LLM's.

A candidate's score is `llm(candidate) + sum_k w_k * f_k(candidate)`, where `f` are the priors' per-candidate
features (SASRec's score, the content prior's similarities). The candidate cross-entropy of that sum is convex in
`w`, so damped Newton steps reach its minimum in a few iterations. The weights are fitted rather than trained: a
scalar at LoRA learning rates barely moves, and SASRec's dot products are scaled for its own softmax over the
catalog, not for one over C candidates.
"""

from __future__ import annotations

import torch

# An L2 penalty on the weights: it keeps the Newton system solvable when features coincide, and the minimum finite
# when a small fitting set is separable.
RIDGE = 1e-3


@torch.no_grad()
def fit_fusion_weights(
    features: torch.Tensor,
    target_index: torch.LongTensor,
    valid: torch.BoolTensor | None = None,
    offsets: torch.Tensor | None = None,
    steps: int = 30,
    ridge: float = RIDGE,
) -> torch.Tensor:
    """The weights `(K,)` that minimise the cross-entropy of `offsets + features @ w` over the candidates.

    Args:
        features: `(B, C, K)` per-candidate features.
        target_index: `(B,)` the target's column.
        valid: `(B, C)` which columns are real candidates (all by default); the others get no probability.
        offsets: `(B, C)` the rest of the candidate scores (the LLM's), zero by default.
        steps: at most this many Newton steps.
        ridge: the L2 penalty `ridge / 2 * |w|^2` added to the mean cross-entropy.
    """
    x = features.double()  # (B, C, K)
    batch, _, k = x.shape
    offsets = torch.zeros(x.shape[:2], dtype=torch.float64) if offsets is None else offsets.double()
    valid = torch.ones(x.shape[:2], dtype=torch.bool) if valid is None else valid
    offsets = offsets.masked_fill(~valid, -torch.inf)
    x = x.masked_fill(~valid[..., None], 0.0)
    target = x[torch.arange(batch), target_index]  # (B, K)

    def loss(w: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(offsets + x @ w, target_index) + 0.5 * ridge * w.dot(w)

    weights = torch.zeros(k, dtype=torch.float64)
    current = loss(weights)
    for _ in range(steps):
        probs = (offsets + x @ weights).softmax(-1)  # (B, C)
        mean = torch.einsum("bc,bck->bk", probs, x)  # (B, K)
        gradient = (mean - target).mean(0) + ridge * weights
        centred = x - mean[:, None]  # (B, C, K)
        hessian = torch.einsum("bc,bck,bcl->kl", probs, centred, centred) / batch
        hessian = hessian + ridge * torch.eye(k, dtype=torch.float64)
        step = torch.linalg.solve(hessian, gradient)
        size = 1.0
        while size > 1e-4:  # backtracking: a full Newton step can overshoot where the softmax saturates
            trial = weights - size * step
            trial_loss = loss(trial)
            if trial_loss <= current:
                break
            size /= 2
        else:
            break
        converged = (current - trial_loss) < 1e-12
        weights, current = trial, trial_loss
        if converged:
            break
    return weights


__all__ = ["RIDGE", "fit_fusion_weights"]
