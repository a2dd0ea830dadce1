"""Faithfulness curves, and the areas the Mechanistic Interpretability Benchmark scores them by.

A faithfulness curve keeps the top p % of the valid edges by score, for each p of a list of
percentages, and evaluates each such circuit (``acd.evaluate``). Two areas summarise it, as the
Mechanistic Interpretability Benchmark (MIB; Mueller et al. 2025) defines them:

- **CPR** (circuit performance ratio, higher is better): the area under f, for circuits chosen
  by *signed* score (edges that push the metric the wrong way come last);
- **CMD** (circuit-model distance, lower is better): the area under |1 - f|, for circuits chosen
  by *absolute* score.

The area convention is MIB's own, from ``evaluate_area_under_curve`` in
``MIB_circuit_track/evaluation.py`` of the MIB circuit-localization track repository
(github.com/hannamw/MIB-circuit-track; read in its fork cisnlp/MIB-circuit-track at commit
8284199). Its CPR and CMD are the ``area_under`` and
``area_from_1`` that function returns (``scripts/print_results.py`` tabulates them):

- the x axis is the *fraction* of edges kept, p / 100 (MIB lists 0.001, 0.002, 0.005, 0.01,
  0.02, 0.05, 0.1, 0.2, 0.5, 1 — ``CURVE_PERCENTS`` / 100);
- the trapezoid rule over the listed points only: nothing is added before the first point or
  after the last, and the sum is not divided by the x range. With MIB's points a curve that is
  1 everywhere has area 1 - 0.001 = 0.999, not 1;
- f at each point is the ratio of means over prompts, (mean M(C) - mean M(empty)) /
  (mean M(full) - mean M(empty)) — ``CircuitEvaluation.faithfulness``;
- a point keeps ``int(fraction * n_edges)`` edges: the fraction of an edge is dropped (floor), so
  on a small graph the first points can be the empty circuit (f = 0). ``edge_counts`` does the
  same, guarding against float error (0.29 * 100 must give 29, not 28).

Signs. acd scores an edge by M(patched) - M(clean) (``acd.attribution``), so an edge the
behaviour relies on scores *negative* under the task metrics (logit/probability difference,
log-probability). MIB attributes with the loss -logit_diff over (corrupted - clean)
activations (``scripts/run_attribution.py``: ``loss=True``; ``eap/attribute.py``), which to first
order is minus acd's score: its signed ranking puts the most helpful edges first. ``cpr``
therefore ranks by -score, the same order. For scores whose helpful edges are positive (e.g.
attributed with metric="kl", which patching raises), pass ``higher_is_helpful=True``.
``faithfulness_curve`` itself ranks the scores it is given, largest first, as
``select_topn`` does.

One difference from MIB: MIB prunes the top-n edges that lie on no input -> logits path before
evaluating; here a point evaluates exactly ``acd.search.select_topn``'s mask (no pruning), so a
curve point equals ``evaluate_circuit`` on that mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from acd.atomic import atomic_paths
from acd.errors import AcdError
from acd.evaluate import CircuitEvaluation, evaluate_circuits
from acd.nodes import induced_edges, n_selectable, top_nodes
from acd.search import select_topn

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.models.load import ModelAdapter
    from acd.tasks import PromptBatch

# MIB's percentages of edges kept (its fractions 0.001 ... 1, times 100).
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)

# Slack for float error when flooring p * n / 100 to a whole number of edges.
_FLOOR_SLACK = 1e-9


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-p % circuits, one entry per percentage.

    ``n_edges[i]`` is the number of edges kept at ``percents[i]`` (``edge_counts``);
    ``faithfulness[i]`` the ratio of means over prompts; ``faithfulness_p05`` /
    ``faithfulness_p95`` the 5th and 95th percentiles of the per-prompt faithfulness (NaN when
    every prompt is degenerate, see ``acd.evaluate``). ``absolute`` says whether edges were
    ranked by |score| (CMD's choice) or by signed score (CPR's). ``level`` is ``node`` for a
    node-level curve (``n_edges`` then counts kept *nodes*, each point the circuit of every edge
    between them: ``acd.nodes``), ``positional`` for a curve over positional edges
    (``acd.positional.curve``: ``n_edges`` counts positional edges).
    """

    percents: tuple[float, ...]
    n_edges: tuple[int, ...]
    faithfulness: tuple[float, ...]
    faithfulness_p05: tuple[float, ...]
    faithfulness_p95: tuple[float, ...]
    absolute: bool
    metric: str
    ablation: str
    n_prompts: int
    evaluations: list[CircuitEvaluation] = field(repr=False, default_factory=list)
    level: str = "edge"

    @classmethod
    def of(
        cls,
        percents: tuple[float, ...],
        counts: tuple[int, ...],
        evaluations: list[CircuitEvaluation],
        absolute: bool,
        ablation: str,
        level: str,
    ) -> FaithfulnessCurve:
        """The curve of the circuits kept at ``percents`` (``counts`` edges or nodes each),
        from their evaluations (one per point, in order)."""
        return cls(
            percents=percents,
            n_edges=counts,
            faithfulness=tuple(e.faithfulness for e in evaluations),
            faithfulness_p05=tuple(e.faithfulness_p05 for e in evaluations),
            faithfulness_p95=tuple(e.faithfulness_p95 for e in evaluations),
            absolute=absolute,
            metric=evaluations[0].metric,
            ablation=ablation,
            n_prompts=evaluations[0].n_prompts,
            evaluations=evaluations,
            level=level,
        )

    @property
    def fractions(self) -> tuple[float, ...]:
        """The x axis of the areas: the percentages as fractions of the edges (p / 100)."""
        return tuple(p / 100 for p in self.percents)

    def area(self) -> float:
        """Area under f (MIB's convention, see ``area_under_curve``)."""
        return area_under_curve(self.percents, self.faithfulness)

    def area_from_one(self) -> float:
        """Area under |1 - f| (MIB's convention, see ``area_under_curve``)."""
        return area_from_one(self.percents, self.faithfulness)

    def summary(self) -> dict[str, object]:
        """The curve and its two areas, JSON-ready."""
        return {
            "metric": self.metric,
            "ablation": self.ablation,
            "absolute": self.absolute,
            "n_prompts": self.n_prompts,
            "level": self.level,
            "percents": list(self.percents),
            "n_edges": list(self.n_edges),
            "faithfulness": list(self.faithfulness),
            "faithfulness_p05": list(self.faithfulness_p05),
            "faithfulness_p95": list(self.faithfulness_p95),
            "area": self.area(),
            "area_from_one": self.area_from_one(),
        }


def edge_counts(percents: Sequence[float], n_edges: int) -> tuple[int, ...]:
    """Edges kept at each percentage: floor(p / 100 * n_edges), as MIB's ``int(pct * n)``.

    0 % keeps no edge and 100 % all of them; a fraction of an edge is dropped, so a small
    percentage of a small graph can keep none.
    """
    _check_percents(percents)
    return tuple(min(n_edges, math.floor(p * n_edges / 100 + _FLOOR_SLACK)) for p in percents)


def area_under_curve(percents: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over x = percents / 100, as MIB computes CPR.

    Only the listed points count: no segment before the first or after the last, and no
    normalisation by the x range (module docstring; MIB's ``evaluate_area_under_curve``). Over
    0 .. 100 % a constant 1 has area 1; over ``CURVE_PERCENTS`` it has area 0.999. A NaN value
    makes the area NaN.
    """
    _check_percents(percents)
    if len(values) != len(percents):
        raise AcdError(f"{len(percents)} percentages but {len(values)} values")
    if len(percents) < 2:
        raise AcdError("an area needs at least two points")
    x = [p / 100 for p in percents]
    y = [float(v) for v in values]
    return sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))


def area_from_one(percents: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoid area under |1 - values| over x = percents / 100, as MIB computes CMD."""
    return area_under_curve(percents, [abs(1.0 - float(v)) for v in values])


def faithfulness_curve(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    scores: torch.Tensor,
    *,
    absolute: bool = True,
    percents: Sequence[float] = CURVE_PERCENTS,
    metric: str = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> FaithfulnessCurve:
    """Evaluate the top-p % circuits of ``scores`` for every p of ``percents``.

    Each point keeps ``acd.search.select_topn(scores, graph.valid, n, absolute=absolute)`` with
    n from ``edge_counts(percents, graph.n_edges)``; all points are evaluated in one
    ``evaluate_circuits`` call, sharing its full-model and empty-circuit runs (so 100 % has
    f = 1 and 0 % has f = 0 exactly).

    Node-level curve: given node scores [n_src] (``acd.attribution.node_scores``), each point
    keeps the top floor(p / 100 * (n_src - 1)) heads and MLPs instead, with ``input``, and
    evaluates every edge between them (``acd.nodes.induced_edges``: each removed node patched
    on all its outgoing edges); 0 % is then the direct input -> logits path, not the empty
    circuit, so its f need not be 0.

    Args:
        scores: [n_src, n_dst] edge scores (``acd.attribute``), or [n_src] node scores.
        absolute: rank edges (nodes) by |score| (True) or by signed score (False).
        percents: strictly increasing percentages of the valid edges (nodes), in [0, 100].
        metric, ablation, batch_size: as for ``acd.evaluate.evaluate_circuit``.
    """
    by_node = tuple(scores.shape) == (graph.n_src,)
    if not by_node and tuple(scores.shape) != (graph.n_src, graph.n_dst):
        raise AcdError(
            f"scores have shape {tuple(scores.shape)}; expected ({graph.n_src}, {graph.n_dst}) "
            f"edge scores or ({graph.n_src},) node scores"
        )
    percents = tuple(float(p) for p in percents)
    if by_node:
        counts = edge_counts(percents, n_selectable(graph))
        masks = torch.stack(
            [induced_edges(top_nodes(scores, graph, n, absolute), graph) for n in counts]
        )
    else:
        counts = edge_counts(percents, graph.n_edges)
        valid = graph.valid
        masks = torch.stack([select_topn(scores, valid, n, absolute=absolute) for n in counts])
    evaluations = evaluate_circuits(
        model, graph, batch, masks, metric=metric, ablation=ablation, batch_size=batch_size
    )
    level = "node" if by_node else "edge"
    return FaithfulnessCurve.of(percents, counts, evaluations, absolute, ablation, level)


def cpr(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    scores: torch.Tensor,
    *,
    percents: Sequence[float] = CURVE_PERCENTS,
    metric: str = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
    higher_is_helpful: bool = False,
) -> tuple[float, FaithfulnessCurve]:
    """MIB's CPR: the area under f of the curve ranked by *signed* score, and that curve.

    Edges are ranked most helpful first: by -score (acd's sign, where an edge the behaviour
    needs scores negative; module docstring), or by score when ``higher_is_helpful``. The
    curve is ``faithfulness_curve`` of those ranking keys with ``absolute=False``.
    """
    curve = faithfulness_curve(
        model,
        graph,
        batch,
        scores if higher_is_helpful else -scores,
        absolute=False,
        percents=percents,
        metric=metric,
        ablation=ablation,
        batch_size=batch_size,
    )
    return curve.area(), curve


def cmd(
    model: ModelAdapter,
    graph: ComputeGraph,
    batch: PromptBatch,
    scores: torch.Tensor,
    *,
    percents: Sequence[float] = CURVE_PERCENTS,
    metric: str = "task",
    ablation: str = "corrupted",
    batch_size: int | None = None,
) -> tuple[float, FaithfulnessCurve]:
    """MIB's CMD: the area under |1 - f| of the curve ranked by *absolute* score, and that curve."""
    curve = faithfulness_curve(
        model,
        graph,
        batch,
        scores,
        absolute=True,
        percents=percents,
        metric=metric,
        ablation=ablation,
        batch_size=batch_size,
    )
    return curve.area_from_one(), curve


def _check_percents(percents: Sequence[float]) -> None:
    if len(percents) == 0:
        raise AcdError("no percentages given")
    for p in percents:
        if not 0 <= p <= 100:  # also refuses NaN
            raise AcdError(f"percentage {p} is outside 0 .. 100")
    if any(b <= a for a, b in zip(percents, percents[1:])):
        raise AcdError(f"percentages must increase strictly: {list(percents)}")


def plot_faithfulness(
    curves: dict[str, FaithfulnessCurve], out: str | Path, *, title: str = ""
) -> list[Path]:
    """Chart faithfulness against the number of edges kept, one line per method.

    Writes ``<out>.png`` and ``<out>.svg`` (``out`` is a path stem; missing parent directories
    are created) and returns those two paths. The x axis is the number of edges kept, on a log
    scale; the y axis is the faithfulness f (ratio of means, ``FaithfulnessCurve.faithfulness``).
    Each method (a key of ``curves``, shown in the legend) gets a line with a marker per point
    and a light band from its 5th to its 95th per-prompt percentile; a dashed line marks f = 1
    (the full model).

    Points that keep 0 edges (the empty circuit, or a small percentage of a small graph floored
    to nothing, see ``edge_counts``) cannot sit on a log axis: they are left out of the line and
    the band. A NaN value (e.g. percentiles of a curve whose prompts are all degenerate) leaves
    a gap. The x label gives the number of valid edges when the curves reach 100 %.

    Both files are written atomically through ``acd.atomic.atomic_paths``, as every file acd
    writes: each is rendered to a temporary file in the target directory and moved into place
    with ``os.replace`` only once both rendered, so a failure leaves neither a partial file nor
    a temporary one, and the charts get a normal file's permissions (0666 less the umask). The
    figure is built with matplotlib's object API on the Agg canvas (no pyplot state) and freed
    before returning.

    Raises:
        AcdError: no curves, a name that is not a non-empty string, a curve whose fields
            disagree in length, or a curve with no point that keeps at least one edge.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    if not curves:
        raise AcdError("plot_faithfulness needs at least one curve; got an empty mapping")
    series = []
    for name, curve in curves.items():
        if not isinstance(name, str) or not name.strip():
            raise AcdError(f"curve names must be non-empty strings; got {name!r}")
        n = len(curve.percents)
        lengths = {
            len(curve.n_edges),
            len(curve.faithfulness),
            len(curve.faithfulness_p05),
            len(curve.faithfulness_p95),
        }
        if lengths != {n}:
            raise AcdError(
                f"curve {name!r}: percents, n_edges, faithfulness and its percentiles "
                "differ in length"
            )
        keep = [i for i in range(n) if curve.n_edges[i] > 0]
        if not keep:
            raise AcdError(f"curve {name!r} has no point that keeps an edge: nothing to plot")
        series.append(
            (
                name,
                [curve.n_edges[i] for i in keep],
                [float(curve.faithfulness[i]) for i in keep],
                [float(curve.faithfulness_p05[i]) for i in keep],
                [float(curve.faithfulness_p95[i]) for i in keep],
            )
        )

    totals = sorted(
        {
            c.n_edges[i]
            for c in curves.values()
            for i, p in enumerate(c.percents)
            if p == 100 and i < len(c.n_edges)
        }
    )
    unit = "nodes" if all(c.level == "node" for c in curves.values()) else "edges"
    if totals:
        xlabel = f"{unit} kept (of {', '.join(f'{t:,}' for t in totals)})"
    else:
        xlabel = f"{unit} kept (count)"

    stem = Path(out)
    targets = [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]

    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    try:
        ax = fig.add_subplot()
        handles = []
        for _name, xs, ys, lo, hi in series:
            (line,) = ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.6)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
            handles.append(line)
        ax.axhline(1.0, color="0.35", linestyle="--", linewidth=1.0, zorder=0)
        ax.set_xscale("log")
        # Plain counts ("10", "100") rather than powers of ten.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("faithfulness (1 = full model)")
        ax.grid(True, which="major", alpha=0.3)
        # Explicit labels: matplotlib would otherwise hide names starting with "_"; "$" would
        # start mathtext.
        labels = [name.replace("$", r"\$") for name, *_ in series]
        ax.legend(handles, labels, title="method", loc="best", fontsize="small")
        if title:
            ax.set_title(title.replace("$", r"\$"))

        with atomic_paths(targets) as temps:
            for tmp, target in zip(temps, targets):
                fmt = target.suffix[1:]
                # SVG text stays text (searchable, scalable) instead of glyph outlines.
                with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "acd"}):
                    canvas.print_figure(
                        str(tmp),
                        format=fmt,
                        dpi=150,
                        metadata={"Date": None} if fmt == "svg" else None,
                    )
    finally:
        fig.clear()
    return targets
