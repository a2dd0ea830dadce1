"""acd: automated circuit discovery for transformer language models.

The public API (see docs/ and DESIGN.md's data flow):

    model = acd.load_model("toy")        # embedded default | local HF dir | hub name
    task = acd.load_task("ioi")          # shipped name | path to .toml / .csv / .jsonl
    circuit = acd.discover(task, model, method=acd.EAPIG(steps=5), select=acd.TopN(200),
                           prompts=100, seed=0, run=acd.RunConfig(metric=None, batch_size=None))
    circuit.edges, circuit.edge_scores, circuit.metrics["faithfulness"]
    acd.discover(task, model, method=acd.ACDC(tau=0.01))   # also Hybrid(tau, candidates=K)
    acd.discover(task, model, method="eap")               # a name: the method's defaults
    graph = acd.ComputeGraph.from_model(model)   # also .from_config(hf_or_tl_config)
    same = acd.load_circuit("out/circuit.json")  # file formats: acd.export, docs/formats.md
"""

from acd.acdc import AcdcResult, acdc
from acd.attribution import attribute, node_scores
from acd.circuit import Circuit
from acd.comparison import Comparison, compare
from acd.discover import RunConfig, discover
from acd.errors import AcdError, TaskError
from acd.evaluate import CircuitEvaluation, evaluate_circuit
from acd.export import load_circuit, read_eapig_json, write_eapig_json
from acd.graph import ComputeGraph
from acd.methods import (
    ACDC,
    EAP,
    EAPIG,
    CleanCorrupted,
    EAPIGActivations,
    Exact,
    Greedy,
    Hybrid,
    Threshold,
    TopN,
)
from acd.models import ModelAdapter, list_models, load_model
from acd.positional import PositionalCircuit, PositionalGraph, positional_scores
from acd.tasks import PromptBatch, PromptPair, Task, list_tasks, load_task

__version__ = "0.1.0"

__all__ = [
    "ACDC",
    "EAP",
    "EAPIG",
    "EAPIGActivations",
    "CleanCorrupted",
    "Exact",
    "Greedy",
    "Hybrid",
    "RunConfig",
    "Threshold",
    "TopN",
    "AcdError",
    "AcdcResult",
    "Circuit",
    "CircuitEvaluation",
    "Comparison",
    "ComputeGraph",
    "acdc",
    "attribute",
    "compare",
    "discover",
    "evaluate_circuit",
    "load_circuit",
    "node_scores",
    "positional_scores",
    "ModelAdapter",
    "PositionalCircuit",
    "PositionalGraph",
    "PromptBatch",
    "PromptPair",
    "Task",
    "TaskError",
    "list_models",
    "list_tasks",
    "load_model",
    "load_task",
    "read_eapig_json",
    "write_eapig_json",
]
