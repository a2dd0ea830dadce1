"""Methods and selections: small frozen dataclasses in one registry.

A *method* decides which edges matter. Two kinds:

    scoring methods   EAP(), EAPIG(steps=5),              score every edge (acd.attribution);
                      EAPIGActivations(steps=5),          a *selection* then keeps some
                      CleanCorrupted(), Exact()
    searches          ACDC(tau), Hybrid(tau, candidates)  decide the circuit themselves (acd.acdc)

A *selection* turns scores into a circuit: TopN(n), Threshold(t), Greedy(n) (acd.search).

Each object validates itself once, when it is built (AcdError, one line), records its own
parameters into a circuit (``params``), and is rebuilt from a circuit's method name and
parameters (``method_from_params``, ``selection_from_params``; what ``Circuit.method_spec``
returns for a loaded circuit.json). ``METHODS`` and ``SELECTIONS`` map the names users type
(``method="eap-ig"``) to the classes; the command line builds its choices and help from them.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from acd.errors import AcdError

if TYPE_CHECKING:
    from acd.graph import ComputeGraph
    from acd.positional.graph import PositionalGraph
    from acd.runner import PromptRunner
    from acd.tasks import PromptBatch


def _check_int(what: str, value: Any, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise AcdError(f"{what} must be an integer >= {least}, got {value!r}")


def _check_bool(what: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise AcdError(f"{what} must be True or False, got {value!r}")


def _frozen_norms_option(frozen_norms: bool) -> dict[str, Any]:
    """``frozen_norms`` as a scoring option and a circuit parameter: recorded only when True,
    so that the circuits of plain EAP / EAP-IG keep their parameters as before."""
    return {"frozen_norms": True} if frozen_norms else {}


# --------------------------------------------------------------------------------------------
# Scoring methods


@dataclass(frozen=True)
class ScoringMethod:
    """A method that scores every valid edge; a selection keeps some."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def score(self, runner: PromptRunner, *, progress: bool = True) -> torch.Tensor:
        """Scores [n_src, n_dst] on the runner's prompts (acd.attribution)."""
        from acd.attribution import score_with

        return score_with(runner, self.name, progress=progress, **self._score_options())

    def score_nodes(
        self, runner: PromptRunner, *, progress: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Node scores [n_src] (acd.nodes) and the edge scores [n_src, n_dst] they come from,
        or None where the method measures nodes directly (exact). A gradient method's node
        score is the sum of its edge scores (acd.attribution.node_scores)."""
        edges = self.score(runner, progress=progress)
        return edges.sum(dim=1), edges

    def score_positions(
        self, runner: PromptRunner, pgraph: PositionalGraph, *, progress: bool = True
    ) -> torch.Tensor:
        """Positional scores [n_src, P, n_dst, P] (acd.positional.scores): eap, eap-ig and
        exact have a positional form; the others raise AttributionError."""
        from acd.positional.scores import score_positional_with

        return score_positional_with(
            runner, pgraph, self.name, progress=progress, **self._score_options()
        )

    def _score_options(self) -> dict[str, Any]:
        return {}

    def params(self) -> dict[str, Any]:
        """What a circuit records about this method (circuit.json ``params``)."""
        return {}

    @property
    def memory_kind(self) -> str:
        """Whose buffers size the prompt chunks (acd.memory.bytes_per_prompt)."""
        return self.name


@dataclass(frozen=True)
class EAP(ScoringMethod):
    """Edge attribution patching: one gradient at the clean run per prompt chunk.
    ``frozen_norms``: the gradient with every norm's statistics held constant (acd.attribution,
    "Frozen norms")."""

    _: KW_ONLY
    frozen_norms: bool = False
    name: ClassVar[str] = "eap"
    summary: ClassVar[str] = "edge attribution patching: first-order estimate, one backward"

    def __post_init__(self) -> None:
        _check_bool("frozen_norms", self.frozen_norms)

    def _score_options(self) -> dict[str, Any]:
        return _frozen_norms_option(self.frozen_norms)

    def params(self) -> dict[str, Any]:
        return _frozen_norms_option(self.frozen_norms)


@dataclass(frozen=True)
class EAPIG(ScoringMethod):
    """EAP with the gradient averaged over ``steps`` inputs between corrupted and clean;
    ``frozen_norms`` as EAP's."""

    steps: int = 5
    _: KW_ONLY
    frozen_norms: bool = False
    name: ClassVar[str] = "eap-ig"
    summary: ClassVar[str] = "EAP with integrated gradients over the input embeddings (default)"

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_bool("frozen_norms", self.frozen_norms)

    def _score_options(self) -> dict[str, Any]:
        return {"ig_steps": self.steps, **_frozen_norms_option(self.frozen_norms)}

    def params(self) -> dict[str, Any]:
        return {"ig_steps": self.steps, **_frozen_norms_option(self.frozen_norms)}


@dataclass(frozen=True)
class EAPIGActivations(ScoringMethod):
    """EAP with the gradient of each edge averaged over ``steps`` runs in which its source's
    layer slot is interpolated between its patch and clean outputs (MIB's EAP-IG-activations).
    ``frozen_norms`` as for EAP."""

    steps: int = 5
    _: KW_ONLY
    frozen_norms: bool = False
    name: ClassVar[str] = "eap-ig-activations"
    summary: ClassVar[str] = "EAP with integrated gradients over each layer's activations"

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1)
        _check_bool("frozen_norms", self.frozen_norms)

    def _score_options(self) -> dict[str, Any]:
        return {"ig_steps": self.steps, **_frozen_norms_option(self.frozen_norms)}

    def params(self) -> dict[str, Any]:
        return {"ig_steps": self.steps, **_frozen_norms_option(self.frozen_norms)}

    @property
    def memory_kind(self) -> str:
        # One gradient buffer per run, as EAP-IG's (acd.attribution._runner).
        return "eap-ig"


@dataclass(frozen=True)
class CleanCorrupted(ScoringMethod):
    """EAP with the gradient averaged at the clean and the corrupted run (EAP-IG's two-point
    variant). ``frozen_norms`` as for EAP."""

    _: KW_ONLY
    frozen_norms: bool = False
    name: ClassVar[str] = "clean-corrupted"
    summary: ClassVar[str] = "EAP with the gradient averaged at the clean and corrupted runs"

    def __post_init__(self) -> None:
        _check_bool("frozen_norms", self.frozen_norms)

    def _score_options(self) -> dict[str, Any]:
        return _frozen_norms_option(self.frozen_norms)

    def params(self) -> dict[str, Any]:
        return _frozen_norms_option(self.frozen_norms)

    @property
    def memory_kind(self) -> str:
        # Two gradient buffers, as EAP-IG's with m >= 2 (acd.attribution._runner).
        return "eap-ig"


@dataclass(frozen=True)
class Exact(ScoringMethod):
    """Activation patching of every edge, one patched run per edge and prompt (batched)."""

    variants_per_forward: int = 256
    name: ClassVar[str] = "exact"
    summary: ClassVar[str] = "activation patching of each edge: exact, one run per edge"

    def __post_init__(self) -> None:
        _check_int("variants_per_forward", self.variants_per_forward, 1)

    def _score_options(self) -> dict[str, Any]:
        return {"variants_per_forward": self.variants_per_forward}

    def score_nodes(
        self, runner: PromptRunner, *, progress: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each source node patched on all its outgoing edges: one run per node and prompt
        (no edge scores: measuring them would cost one run per edge)."""
        from acd.attribution import exact_node_scores

        scores = exact_node_scores(
            runner, progress=progress, variants_per_forward=self.variants_per_forward
        )
        return scores, None


# --------------------------------------------------------------------------------------------
# Searches


@dataclass(frozen=True)
class SearchResult:
    """A search's circuit: ``mask`` [n_src, n_dst] bool, ``scores`` [n_src, n_dst] (ACDC's
    deltas), and what the circuit records about the search (``params``)."""

    mask: torch.Tensor
    scores: torch.Tensor
    params: dict[str, Any]


@dataclass(frozen=True)
class ACDC:
    """ACDC over every valid edge (acd.acdc): an edge is removed when removing it raises the
    search metric by less than ``tau`` (``kl``) or moves a task metric by less than ``tau``."""

    tau: float
    _: KW_ONLY
    metric: str = "kl"
    rows_per_forward: int = 64
    checkpoint: str | Path | None = None
    name: ClassVar[str] = "acdc"
    summary: ClassVar[str] = "ACDC: greedy edge removal over every edge (needs --tau)"

    def __post_init__(self) -> None:
        from acd.acdc import check_search_arguments  # acd.acdc runs the search: imported late

        check_search_arguments(self.tau, self.rows_per_forward, f"method {self.name!r}")

    @property
    def memory_kind(self) -> str:
        return "exact"

    def search(
        self, runner: PromptRunner, batch: PromptBatch, *, progress: bool = True
    ) -> SearchResult:
        """Run the search on the runner's model, graph and prompts (``batch``, every rank's)."""
        return self._acdc(runner, batch, None, {}, progress)

    def _acdc(
        self,
        runner: PromptRunner,
        batch: PromptBatch,
        candidates: torch.Tensor | None,
        extra: dict[str, Any],
        progress: bool,
    ) -> SearchResult:
        from acd.acdc import acdc

        result = acdc(
            runner.model,
            runner.graph,
            batch,
            tau=self.tau,
            candidates=candidates,
            rows_per_forward=self.rows_per_forward,
            progress=progress,
            checkpoint=self.checkpoint,
            runner=runner.with_metric(self.metric),
        )
        params = {**self.params(), **extra, "visited": result.visited}
        return SearchResult(mask=result.mask, scores=result.deltas, params=params)

    def params(self) -> dict[str, Any]:
        return {"tau": float(self.tau), "metric": self.metric}


@dataclass(frozen=True)
class Hybrid(ACDC):
    """ACDC over the ``candidates`` edges with the largest |``scoring``| scores, every other
    edge removed from the start."""

    candidates: int | None = None
    scoring: EAP | EAPIG = EAPIG()
    name: ClassVar[str] = "hybrid"
    summary: ClassVar[str] = "ACDC over the top --candidates edges of an attribution"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates is None:
            raise AcdError("method 'hybrid' needs candidates= (how many top-scoring edges to test)")
        _check_int("candidates", self.candidates, 0)
        if self.candidates < 1:
            raise AcdError(
                f"candidates must be between 1 and the graph's edge count, got {self.candidates}"
            )
        if not isinstance(self.scoring, (EAP, EAPIG)):
            known = ", ".join(HYBRID_SCORING)
            raise AcdError(f"unknown scoring {self.scoring!r} for 'hybrid'; choose one of {known}")
        if isinstance(self.scoring, EAP) and self.metric == "kl":
            # EAP's gradient of KL at the clean run is zero: the top-K would be arbitrary.
            raise AcdError("scoring 'eap' with metric 'kl' gives all-zero scores; use 'eap-ig'")

    def check_graph(self, graph: ComputeGraph) -> None:
        """Refuse a candidate count the graph cannot hold (before any scoring)."""
        if self.candidates is None or not 1 <= self.candidates <= graph.n_edges:
            raise AcdError(
                f"candidates must be between 1 and the graph's {graph.n_edges} edges, "
                f"got {self.candidates}"
            )

    def search(
        self, runner: PromptRunner, batch: PromptBatch, *, progress: bool = True
    ) -> SearchResult:
        from acd.attribution import score_with
        from acd.search import select_topn

        # The candidates are scored with the search's metric, on the same prompts and chunks.
        scores = score_with(
            runner.with_metric(self.metric),
            self.scoring.name,
            progress=progress,
            **self.scoring._score_options(),
        )
        assert self.candidates is not None  # checked when built
        start_from = select_topn(scores, runner.graph.valid, self.candidates)
        extra = {"candidates": self.candidates, "scoring": self.scoring.name}
        extra.update(self.scoring.params())
        return self._acdc(runner, batch, start_from, extra, progress)


# --------------------------------------------------------------------------------------------
# Selections


@dataclass(frozen=True)
class TopN:
    """The ``n`` best edges (by |score| when ``absolute``); ``n`` None: ``default_edges``."""

    n: int | None = None
    absolute: bool = True
    name: ClassVar[str] = "topn"
    summary: ClassVar[str] = "the --edges best-scoring edges (default)"

    def __post_init__(self) -> None:
        if self.n is not None:
            _check_int("edges", self.n, 0)

    def sized(self, graph: ComputeGraph) -> TopN:
        """This selection with ``n`` filled in and checked against ``graph``."""
        n = default_edges(graph) if self.n is None else self.n
        if not 0 <= n <= graph.n_edges:  # before the expensive scoring, not after
            raise AcdError(
                f"cannot keep {n} edges: the graph has {graph.n_edges} (choose 0..{graph.n_edges})"
            )
        return type(self)(n, self.absolute)

    def size(self, graph: ComputeGraph) -> int:
        """How many edges this selection keeps on ``graph`` (checked)."""
        n = self.sized(graph).n
        assert n is not None  # sized fills it in
        return n

    def select(self, scores: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
        from acd.search import select_topn

        return select_topn(scores, graph.valid, self.size(graph), absolute=self.absolute)

    def sized_nodes(self, graph: ComputeGraph) -> TopN:
        """This selection over heads and MLPs (``n`` of them; None: ``acd.nodes.default_nodes``),
        checked against ``graph``."""
        from acd.nodes import default_nodes, n_selectable

        n = default_nodes(graph) if self.n is None else self.n
        most = n_selectable(graph)
        if not 0 <= n <= most:
            raise AcdError(
                f"cannot keep {n} nodes: the graph has {most} heads and MLPs (choose 0..{most})"
            )
        return type(self)(n, self.absolute)

    def select_nodes(self, scores: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
        """The ``n`` best heads and MLPs, and ``input``: scores [n_src] -> [n_src] bool (ties by
        index; acd.nodes)."""
        from acd.nodes import top_nodes

        n = self.sized_nodes(graph).n
        assert n is not None  # sized_nodes fills it in
        return top_nodes(scores, graph, n, self.absolute)

    def params(self) -> dict[str, Any]:
        return {"edges": self.n, "selection": self.name, "absolute": self.absolute}


@dataclass(frozen=True)
class Greedy(TopN):
    """``n`` edges grown backwards from the logits, best score first (acd.search)."""

    name: ClassVar[str] = "greedy"
    summary: ClassVar[str] = "--edges edges grown backwards from the logits, best first"

    def select(self, scores: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
        from acd.search import select_greedy

        return select_greedy(scores, graph, self.size(graph), absolute=self.absolute)

    def sized_nodes(self, graph: ComputeGraph) -> TopN:
        raise AcdError(
            "selection 'greedy' grows edges backwards from the logits; at level 'node' "
            "choose topn or threshold"
        )

    def select_nodes(self, scores: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
        return self.sized_nodes(graph).select_nodes(scores, graph)


@dataclass(frozen=True)
class Threshold:
    """Every edge scoring at least ``t`` (|score| when ``absolute``)."""

    t: float
    absolute: bool = True
    name: ClassVar[str] = "threshold"
    summary: ClassVar[str] = "every edge scoring at least --threshold"

    def __post_init__(self) -> None:
        if self.t is None:
            raise AcdError("selection 'threshold' needs threshold=")
        if math.isnan(float(self.t)):
            raise AcdError("the threshold is NaN: give a number")

    def sized(self, graph: ComputeGraph) -> Threshold:
        return self

    def select(self, scores: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
        from acd.search import select_threshold

        return select_threshold(scores, graph.valid, self.t, absolute=self.absolute)

    def sized_nodes(self, graph: ComputeGraph) -> Threshold:
        return self

    def select_nodes(self, scores: torch.Tensor, graph: ComputeGraph) -> torch.Tensor:
        """Every head and MLP scoring at least ``t``, and ``input``: [n_src] -> [n_src] bool."""
        from acd.nodes import nodes_at_least

        return nodes_at_least(scores, graph, self.t, self.absolute)

    def params(self) -> dict[str, Any]:
        return {
            "edges": None,
            "selection": self.name,
            "absolute": self.absolute,
            "threshold": self.t,
        }


Method = EAP | EAPIG | EAPIGActivations | CleanCorrupted | Exact | ACDC | Hybrid
Selection = TopN | Greedy | Threshold

METHODS: dict[str, type] = {
    cls.name: cls for cls in (EAP, EAPIG, EAPIGActivations, CleanCorrupted, Exact, ACDC, Hybrid)
}
SCORING_METHODS = ("eap", "eap-ig", "eap-ig-activations", "clean-corrupted", "exact")
SEARCH_METHODS = ("acdc", "hybrid")
HYBRID_SCORING = ("eap-ig", "eap")
SELECTIONS: dict[str, type] = {cls.name: cls for cls in (TopN, Threshold, Greedy)}


def default_edges(graph: ComputeGraph) -> int:
    """The circuit size ``discover`` keeps when given none: 5 % of the valid edges, at most
    200 — small enough to read as a diagram, large enough for the embedded model's tasks
    (docs/results.md: faithfulness >= 0.9 at 5 %)."""
    return min(200, max(1, graph.n_edges // 20))


# --------------------------------------------------------------------------------------------
# From names and options (the command line, string shorthands) and from circuits


def method_from_name(name: str, **options: Any) -> Method:
    """The method called ``name``, built from the ``options`` its class has fields for
    (others, and None values, are ignored): e.g. ``method_from_name("acdc", tau=0.1)``.
    ``ig_steps`` is EAPIG's and EAPIGActivations' ``steps``; ``scoring`` (hybrid) may be a
    name; ``frozen_norms`` with hybrid goes to its scoring (built from a name)."""
    if name not in METHODS:
        raise AcdError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    options = dict(options)
    if name in ("acdc", "hybrid") and options.get("tau") is None:
        raise AcdError(f"method {name!r} needs tau= (the removal threshold, >= 0)")
    if "ig_steps" in options and "steps" not in options:
        options["steps"] = options.pop("ig_steps")
    if name == "hybrid":
        scoring = options.get("scoring") or "eap-ig"
        if isinstance(scoring, str):
            if scoring not in HYBRID_SCORING:
                known = ", ".join(HYBRID_SCORING)
                raise AcdError(f"unknown scoring {scoring!r} for 'hybrid'; choose one of {known}")
            steps = (
                {"steps": options["steps"]} if options.get("steps") and scoring == "eap-ig" else {}
            )
            if options.get("frozen_norms"):
                steps["frozen_norms"] = True  # hybrid's gradients are its scoring's
            options["scoring"] = METHODS[scoring](**steps)
    return _build(METHODS[name], options)


def selection_from_name(name: str, **options: Any) -> Selection:
    """The selection called ``name`` from ``options`` (``edges`` is TopN's and Greedy's ``n``,
    ``threshold`` Threshold's ``t``; others and None values are ignored)."""
    if name not in SELECTIONS:
        raise AcdError(f"unknown selection {name!r}; choose one of {', '.join(SELECTIONS)}")
    options = dict(options)
    if "edges" in options:
        options["n"] = options.pop("edges")
    if "threshold" in options:
        options["t"] = options.pop("threshold")
    if name == "threshold" and options.get("t") is None:
        raise AcdError("selection 'threshold' needs threshold=")
    return _build(SELECTIONS[name], options)


def method_from_params(name: str, params: dict[str, Any]) -> Method:
    """The method a circuit recorded (its ``method`` and ``params``), for a loaded circuit.json;
    old files without a parameter get the default."""
    if name == "hybrid":
        return method_from_name(name, **params)
    if name in ("acdc",):
        return method_from_name(name, tau=params.get("tau"), metric=params.get("metric"))
    return method_from_name(
        name, ig_steps=params.get("ig_steps"), frozen_norms=params.get("frozen_norms")
    )


def selection_from_params(params: dict[str, Any]) -> Selection | None:
    """The selection a circuit recorded, or None for a search's circuit."""
    name = params.get("selection")
    if name is None:
        return None
    # a node-level circuit records its TopN size as "nodes" (acd.nodes)
    size = params.get("edges") if params.get("edges") is not None else params.get("nodes")
    return selection_from_name(
        name,
        edges=size,
        threshold=params.get("threshold"),
        absolute=params.get("absolute"),
    )


def _build(cls: type, options: dict[str, Any]):
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in options.items() if k in names and v is not None})


def checked_method(method: str | Method) -> Method:
    """A method object for ``method`` (a name: its defaults; ``acdc``/``hybrid`` need their
    parameters, so a bare name is refused in one line)."""
    if isinstance(method, str):
        return method_from_name(method)
    if not isinstance(method, (ScoringMethod, ACDC)):
        raise AcdError(f"method must be a name or a method object, got {method!r}")
    return method


def checked_selection(select: str | Selection | None) -> Selection:
    """A selection object for ``select`` (None: TopN(); a name: its defaults)."""
    if select is None:
        return TopN()
    if isinstance(select, str):
        return selection_from_name(select)
    if not isinstance(select, (TopN, Threshold)):
        raise AcdError(f"select must be a name or a selection object, got {select!r}")
    return select


def is_search(method: Method) -> bool:
    return isinstance(method, ACDC)


__all__ = [
    "ACDC",
    "EAP",
    "EAPIG",
    "METHODS",
    "CleanCorrupted",
    "EAPIGActivations",
    "SELECTIONS",
    "Exact",
    "Greedy",
    "Hybrid",
    "Method",
    "ScoringMethod",
    "SearchResult",
    "Selection",
    "Threshold",
    "TopN",
    "default_edges",
    "method_from_name",
    "method_from_params",
    "selection_from_name",
    "selection_from_params",
]
