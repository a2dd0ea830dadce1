"""Selecting a circuit from edge scores.

This module turns scores into a kept-edge mask. Top-n is here; threshold, greedy and ACDC
search join it (each a named entry of ``SELECTIONS``).
"""

from __future__ import annotations

import torch

from acd.errors import AcdError


def select_topn(
    scores: torch.Tensor, valid: torch.Tensor, n: int, *, absolute: bool = True
) -> torch.Tensor:
    """The ``n`` valid edges with the largest scores (by |score| when ``absolute``).

    Ties are broken by edge index (source-major), so the selection is deterministic.

    Args: scores [n_src, n_dst], valid [n_src, n_dst] bool. Returns [n_src, n_dst] bool.
    """
    n_valid = int(valid.sum())
    if not 0 <= n <= n_valid:
        raise AcdError(f"cannot keep {n} edges: the graph has {n_valid} (choose 0..{n_valid})")
    key = (scores.abs() if absolute else scores).detach().float().cpu().flatten()
    key = torch.where(valid.cpu().flatten(), key, torch.tensor(float("-inf")))
    # A stable sort keeps index order among equal scores.
    order = torch.sort(key, descending=True, stable=True).indices[:n]
    mask = torch.zeros(valid.numel(), dtype=torch.bool)
    mask[order] = True
    return mask.view_as(valid)


SELECTIONS = {"topn": select_topn}
