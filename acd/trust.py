"""The trust report of a circuit: is the method right for this model and task, and would other
prompts give the same circuit?

    fidelity    for an approximate method (eap, eap-ig and the other gradient methods): on a
                sample of edges (every selected edge plus a seeded random sample of the others,
                FIDELITY_EDGES in all), the exact patching effect of each edge (acd.attribution,
                ``exact``, on the first FIDELITY_PROMPTS prompts: the cost of exact scoring
                grows with edges x prompts) against the method's score on those prompts:
                Pearson and Spearman correlation, the share of sampled edges whose sign agrees
                (edges whose exact effect is 0 agree only with a score of 0), and the selected
                edges whose |exact effect| is below WEAK_SHARE of the largest |exact effect| in
                the sample (``weak``): kept by the method, nearly irrelevant when measured.
                Exact scoring and the searches (ACDC, hybrid) measure effects themselves and
                get no fidelity figures.
    stability   the circuit found again on ``resamples`` random halves of the prompts (drawn
                without replacement, seeded; Méloux et al. 2025 propose a mean Jaccard of at
                least 0.8 as a bar): the mean and the smallest Jaccard index between each
                resample's circuit and the reported one, and every edge's inclusion frequency
                (the share of resamples whose circuit keeps it), stored with the circuit's
                edges. By default measured for the fast methods only (eap and eap-ig: each
                resample costs one more scoring); ``RunConfig(resamples=N)`` asks for it with
                any method.

``discover`` attaches the report to every circuit unless ``RunConfig(trust=False)``: its
figures go into ``metrics`` (``trust_*`` keys), summary.md and the diagram's title.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.runner import PromptRunner

# Edges sampled for fidelity (the selected ones first); WEAK_SHARE of the largest measured
# effect is what a selected edge must exceed not to count as weak.
FIDELITY_EDGES = 100
FIDELITY_PROMPTS = 20
WEAK_SHARE = 0.01
# Default stability resamples for the fast methods, and the share of prompts each one draws.
RESAMPLES = 5
RESAMPLE_FRACTION = 0.5


@dataclass(frozen=True)
class Fidelity:
    """The method's scores against exact patching on ``n_edges`` sampled edges."""

    n_edges: int  # sampled edges (nodes, for a node-level circuit)
    pearson: float
    spearman: float
    sign_agreement: float
    n_weak: int  # selected edges with |exact effect| < WEAK_SHARE x the largest


@dataclass(frozen=True)
class Stability:
    """The circuit re-found on ``resamples`` random ``fraction``s of the prompts."""

    resamples: int
    fraction: float
    jaccard_mean: float
    jaccard_min: float
    inclusion: torch.Tensor  # [n_src, n_dst] float: share of resamples keeping each edge


@dataclass(frozen=True)
class TrustReport:
    fidelity: Fidelity | None
    stability: Stability | None
    seconds: float

    def summary(self) -> dict[str, float | int]:
        """The scalar figures, as ``metrics`` keys (``trust_*``)."""
        out: dict[str, float | int] = {"trust_seconds": round(self.seconds, 3)}
        if self.fidelity is not None:
            f = self.fidelity
            out.update(
                trust_fidelity_edges=f.n_edges,
                trust_fidelity_pearson=f.pearson,
                trust_fidelity_spearman=f.spearman,
                trust_fidelity_sign_agreement=f.sign_agreement,
                trust_fidelity_weak_selected=f.n_weak,
            )
        if self.stability is not None:
            s = self.stability
            out.update(
                trust_stability_resamples=s.resamples,
                trust_stability_fraction=s.fraction,
                trust_stability_jaccard_mean=s.jaccard_mean,
                trust_stability_jaccard_min=s.jaccard_min,
            )
        return out


def trust_line(metrics: dict, unit: str = "edges") -> str | None:
    """The trust figures of a circuit's ``metrics`` as one line (summary.md, the diagram's
    title), or None when the circuit carries none. ``unit``: what fidelity sampled, ``edges``
    or (a node-level circuit's) ``nodes``."""
    parts = []
    if "trust_fidelity_spearman" in metrics:
        parts.append(
            f"fidelity to exact patching: Spearman {_fmt(metrics['trust_fidelity_spearman'])}, "
            f"Pearson {_fmt(metrics['trust_fidelity_pearson'])}, sign agreement "
            f"{_fmt(metrics['trust_fidelity_sign_agreement'])}, "
            f"{metrics.get('trust_fidelity_weak_selected', 0)} weak kept {unit} "
            f"(on {metrics.get('trust_fidelity_edges', '?')} sampled)"
        )
    if "trust_stability_jaccard_mean" in metrics:
        parts.append(
            f"stability: Jaccard {_fmt(metrics['trust_stability_jaccard_mean'])} mean, "
            f"{_fmt(metrics['trust_stability_jaccard_min'])} min over "
            f"{metrics.get('trust_stability_resamples', '?')} resamples of "
            f"{_fmt(100 * float(metrics.get('trust_stability_fraction', 0)), 0)} % of the prompts"
        )
    return "; ".join(parts) or None


def _fmt(value, digits: int = 2) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if number != number else f"{number:.{digits}f}"


def sample_edges(
    graph: ComputeGraph, selected: torch.Tensor, n: int = FIDELITY_EDGES, seed: int = 0
) -> torch.Tensor:
    """[n_src, n_dst] bool: every selected valid edge, then seeded random other valid edges up
    to ``n`` in all (all valid edges when the graph has at most ``n``)."""
    return sample_valid(graph.valid, selected, n, seed)


def sample_valid(
    valid: torch.Tensor, selected: torch.Tensor, n: int = FIDELITY_EDGES, seed: int = 0
) -> torch.Tensor:
    """``sample_edges`` over any valid mask (a plain or a positional graph's): bool of
    ``valid``'s shape, every selected valid entry, then seeded random other valid entries up
    to ``n`` in all."""
    chosen = selected.bool().cpu() & valid
    others = (valid & ~chosen).flatten().nonzero().squeeze(1)
    room = max(0, n - int(chosen.sum()))
    generator = torch.Generator().manual_seed(seed)
    picked = others[torch.randperm(len(others), generator=generator)[:room]]
    sample = chosen.flatten().clone()
    sample[picked] = True
    return sample.view_as(valid)


def fidelity(
    runner: PromptRunner,
    scores: torch.Tensor,
    selected: torch.Tensor,
    *,
    n_edges: int = FIDELITY_EDGES,
    seed: int = 0,
) -> Fidelity:
    """``scores`` [n_src, n_dst] against exact patching effects on ``sample_edges`` (the
    runner's prompts, metric and ablation); ``selected`` [n_src, n_dst] bool."""
    from acd.attribution import score_with

    sample = sample_edges(runner.graph, selected, n_edges, seed)
    exact = score_with(runner, "exact", progress=False, edge_mask=sample)
    kept = (selected.bool().cpu() & runner.graph.valid)[sample]
    return _fidelity_figures(scores.detach().double().cpu()[sample], exact.double()[sample], kept)


def node_fidelity(runner: PromptRunner, scores: torch.Tensor, kept: torch.Tensor) -> Fidelity:
    """Node scores [n_src] against exact node patching (``acd.attribution.exact_node_scores``)
    on every source node: a graph has few enough nodes to measure them all (GPT-2 small: 157).
    ``kept`` [n_src] bool: the selected nodes; ``n_edges`` of the result counts nodes."""
    from acd.attribution import exact_node_scores

    exact = exact_node_scores(runner, progress=False)
    return _fidelity_figures(scores.detach().double().cpu(), exact.double(), kept.bool().cpu())


def _fidelity_figures(x: torch.Tensor, y: torch.Tensor, kept: torch.Tensor) -> Fidelity:
    """Scores ``x`` against exact effects ``y`` (both [n]); ``kept`` [n] bool: selected."""
    largest = float(y.abs().max()) if len(y) else 0.0
    weak = kept & (y.abs() < WEAK_SHARE * largest)
    return Fidelity(
        n_edges=len(x),
        pearson=_correlation(x, y),
        spearman=_correlation(_ranks(x), _ranks(y)),
        sign_agreement=float((torch.sign(x) == torch.sign(y)).double().mean()),
        n_weak=int(weak.sum()),
    )


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a ∩ b| / |a ∪ b| of two edge masks (1 when both are empty)."""
    a, b = a.bool().cpu(), b.bool().cpu()
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def resample_indices(n: int, resamples: int, fraction: float, seed: int) -> list[torch.Tensor]:
    """``resamples`` seeded draws of ceil(fraction x n) prompt indices (at least 1 and, for
    n > 1, at most n - 1 so that a resample differs from the prompts), each without
    replacement, ascending."""
    size = min(max(1, math.ceil(fraction * n)), max(1, n - 1))
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=generator)[:size].sort().values for _ in range(resamples)]


def stability(masks: list[torch.Tensor], reported: torch.Tensor, fraction: float) -> Stability:
    """The figures of the circuits ``masks`` [n_src, n_dst] bool found on the resamples,
    against the ``reported`` circuit."""
    indices = [jaccard(mask, reported) for mask in masks]
    inclusion = torch.stack([m.bool().cpu().double() for m in masks]).mean(dim=0)
    return Stability(
        resamples=len(masks),
        fraction=fraction,
        jaccard_mean=float(sum(indices) / len(indices)),
        jaccard_min=float(min(indices)),
        inclusion=inclusion.float(),
    )


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), as Spearman's correlation uses them."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(values.numpy())).double()


def _correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson's correlation; NaN when either side is constant (no ranking to compare)."""
    if len(x) < 2 or float(x.std()) == 0 or float(y.std()) == 0:
        return math.nan
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / (xc.norm() * yc.norm()))
