"""Position-aware circuits: edges at the token spans where they act (docs/architecture.md,
"Positional circuits").

- ``graph``: ``PositionalGraph`` (the plain graph with a span axis; which positional edges
  exist) and ``PositionalCircuit`` (a circuit's kept positional edges and scores);
- ``runs``: patched and gradient forwards over positional edges (one copy per span);
- ``scores``: EAP, EAP-IG and exact scores per (edge, span);
- ``prune``, ``evaluate``, ``trust``, ``curve``: pruning, evaluation, the trust report and
  faithfulness curves at span resolution.
"""

from acd.positional.curve import positional_faithfulness_curve
from acd.positional.evaluate import evaluate_positional_with
from acd.positional.graph import PositionalCircuit, PositionalGraph
from acd.positional.prune import prune_positional
from acd.positional.scores import POSITIONAL_METHODS, positional_runner, positional_scores
from acd.positional.trust import positional_fidelity

__all__ = [
    "POSITIONAL_METHODS",
    "PositionalCircuit",
    "PositionalGraph",
    "evaluate_positional_with",
    "positional_faithfulness_curve",
    "positional_fidelity",
    "positional_runner",
    "positional_scores",
    "prune_positional",
]
