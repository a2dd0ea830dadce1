"""Selection of circuits from scores."""

from __future__ import annotations

import pytest
import torch

from acd.errors import AcdError
from acd.search import select_topn


def test_topn_keeps_the_largest_valid_scores():
    scores = torch.tensor([[0.5, -3.0, 9.0], [1.0, 2.0, -0.1]])
    valid = torch.tensor([[True, True, False], [True, True, True]])  # 9.0 is not an edge
    by_abs = select_topn(scores, valid, 2)
    assert by_abs.nonzero().tolist() == [[0, 1], [1, 1]]  # |-3| and 2
    signed = select_topn(scores, valid, 2, absolute=False)
    assert signed.nonzero().tolist() == [[1, 0], [1, 1]]  # 2 and 1
    assert select_topn(scores, valid, 0).sum() == 0
    assert torch.equal(select_topn(scores, valid, 5), valid)


def test_topn_breaks_ties_by_edge_index():
    scores = torch.ones(3, 3)
    valid = torch.ones(3, 3, dtype=torch.bool)
    assert select_topn(scores, valid, 4).flatten().nonzero().flatten().tolist() == [0, 1, 2, 3]


def test_topn_refuses_impossible_sizes():
    with pytest.raises(AcdError, match="cannot keep 7 edges: the graph has 6"):
        select_topn(torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 7)
