"""Update analysis (paper section 4.4): how many directions a weight update really uses."""

from __future__ import annotations

import torch


def effective_rank(matrix: torch.Tensor) -> float:
    """Roy and Vetterli's (2007) effective rank: exp of the entropy of the normalised singular values.

    It equals r for a matrix with r equal non-zero singular values, and lies between 1 and the rank otherwise;
    0 for the zero matrix.
    """
    singular = torch.linalg.svdvals(matrix.detach().double())
    total = singular.sum()
    if total <= 0:
        return 0.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
