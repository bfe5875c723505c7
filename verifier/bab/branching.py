"""Which split to make next: BaBSR for ReLU splits, gradient × width (with a longest-edge term) for input splits.

Both score from the linear lower bound CROWN just computed for the domain, on the row that decides it
(the row closest to refuting the domain's worst undecided disjunct), so scoring costs no extra bound.
"""

from __future__ import annotations

import torch

# input splitting: the weight of a dimension's relative width beside its share of the bound's slack
WIDTH_WEIGHT = 0.5


def decisive_rows(lower: torch.Tensor, owner: torch.Tensor, alive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per domain: (score, row). A disjunct is refuted by its best row, the domain needs every alive
    disjunct refuted, so the domain's score is min over alive disjuncts of max over their rows of the
    lower bound of C y − d, and `row` attains it. Domains with no alive disjunct score +inf."""
    n, rows = lower.shape
    disjuncts = alive.shape[1]
    best = torch.full((n, disjuncts), -torch.inf, dtype=lower.dtype)
    best = best.scatter_reduce(1, owner.expand(n, rows), lower, reduce="amax")
    best = torch.where(alive, best, torch.full_like(best, torch.inf))
    score, worst = best.min(dim=1)
    # the best row of the worst disjunct
    mine = owner.expand(n, rows) == worst[:, None]
    row = torch.where(mine, lower, torch.full_like(lower, -torch.inf)).argmax(dim=1)
    return score, row


def babsr(
    relu_coef: list[torch.Tensor],
    pre_lower: list[torch.Tensor],
    pre_upper: list[torch.Tensor],
    splits: list[torch.Tensor],
    biases: list[torch.Tensor],
    row: torch.Tensor,
    k: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BaBSR (Bunel et al., "Branch and bound for piecewise linear neural network verification", JMLR
    2020), as α,β-CROWN computes it: for an unstable neuron with bounds l < 0 < u and coefficient λ of
    its ReLU output in the lower bound, the intercept term min(λ, 0)·(−l·u/(u−l)) plus the larger bias
    term b·λ·(s−1) or b·λ·s (s = u/(u−l)); the neurons with the largest |score| are split first, ties
    broken by the intercept alone. Returns per domain the best `k` (layer, neuron) pairs, (n, k) each,
    best first; layer −1 where fewer than k unsplit unstable neurons are left."""
    n = row.shape[0]
    picks = torch.arange(n)
    keys, layers, neurons = [], [], []
    for k_layer in range(len(pre_lower)):
        lo, hi = pre_lower[k_layer], pre_upper[k_layer]
        free = (lo < 0) & (hi > 0) & (splits[k_layer] == 0)
        lam = relu_coef[k_layer][picks, row]  # (n, size)
        lt, ut = lo.clamp(max=0), hi.clamp(min=0)
        slope = torch.where(free, ut / (ut - lt).clamp_min(1e-12), torch.zeros_like(ut))
        intercept_term = lam.clamp(max=0) * (-lt * slope)
        bias = biases[k_layer][None, :] * lam
        score = (torch.maximum(bias * (slope - 1), bias * slope) + intercept_term).abs()
        # lexicographic (score, |intercept term|) in one key; neurons that cannot be split rank last
        key = score + 1e-9 * intercept_term.abs() / (1 + intercept_term.abs())
        keys.append(torch.where(free, key, torch.full_like(key, -1.0)))
        layers.append(torch.full_like(free, k_layer, dtype=torch.long))
        neurons.append(torch.arange(free.shape[1]).expand(n, -1))
    if not keys:
        return torch.full((n, k), -1, dtype=torch.long), torch.zeros((n, k), dtype=torch.long)
    key, layer, neuron = torch.cat(keys, 1), torch.cat(layers, 1), torch.cat(neurons, 1)
    top = min(k, key.shape[1])
    value, index = key.topk(top, dim=1)
    chosen_layer = torch.where(value >= 0, layer.gather(1, index), torch.full_like(index, -1))
    chosen_neuron = neuron.gather(1, index)
    if top < k:
        pad = torch.full((n, k - top), -1, dtype=torch.long)
        chosen_layer, chosen_neuron = torch.cat([chosen_layer, pad], 1), torch.cat([chosen_neuron, pad.clamp(0)], 1)
    return chosen_layer, chosen_neuron


def input_gain(coef: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Per box, the input dimensions to halve, best first (n, k).

    The key is the dimension's share of the linear bound's slack, |∂ bound/∂x_i| × width_i (halving it
    recovers about a quarter of that share), over the box's largest share, plus `WIDTH_WEIGHT` × its
    width over the box's largest width. The gradient alone misleads where the bound's looseness comes
    from ReLUs it relaxes flat: on ACAS Xu 1_9 prop_2 the lower bound ignored an input of width 0.25
    while the gradient kept halving the other four down to float32's resolution (undecided after 112 s;
    with the width term decided in about 1 s of BaB). Widths are in input units, as the
    longest-edge rule has them (VNN-LIB benchmarks normalise their inputs); widths relative to the root
    box's did worse on ACAS Xu (2 of 4 hard rows undecided in 27 s). A dimension that cannot be halved
    in the dtype (its midpoint equals an end) is never chosen while another can be. `coef` is
    (n, inputs) for the decisive row."""
    lower, upper = lower.reshape(len(lower), -1), upper.reshape(len(upper), -1)
    width = upper - lower
    mid = (lower + upper) / 2
    splittable = (mid > lower) & (mid < upper)
    tiny = torch.finfo(width.dtype).tiny
    gain = coef.abs() * width
    share = gain / gain.amax(dim=1, keepdim=True).clamp_min(tiny)
    relative = width / width.amax(dim=1, keepdim=True).clamp_min(tiny)
    key = torch.where(splittable, share + WIDTH_WEIGHT * relative, torch.full_like(gain, -1.0))
    return key.topk(min(k, key.shape[1]), dim=1).indices
