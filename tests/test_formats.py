"""File schemas (acd/formats/): each mistake of issue 16 in a file acd reads is refused by its
reader with one AcdError line naming the file and the field, and by the command line with
exit code 2, one `acd: error:` line and no traceback; every file acd writes reads back."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from format_files import REPO, checkpoint_case, circuit_text, eapig_text, task_folder

from acd.acdc import AcdcError, _SearchState
from acd.circuit import Circuit
from acd.cli import main
from acd.errors import AcdError, TaskError
from acd.export import (
    circuit_from_dict,
    circuit_to_dict,
    load_any_circuit,
    load_circuit,
    read_eapig_json,
    save_circuit_json,
)
from acd.formats.circuit import graph_sizes
from acd.graph import ComputeGraph, GraphShape
from acd.tasks import load_task

DEEP = "[" * 100_000 + "]" * 100_000  # beyond what Python's JSON parser can nest


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models["gpt2"]


@pytest.fixture(scope="module")
def document(gpt2) -> dict:
    """A valid circuit.json document, as acd.discover's circuit is written."""
    return json.loads(circuit_text(gpt2[0]))


def write(path: Path, document, raw: dict[str, str] | None = None) -> Path:
    """``document`` as JSON at ``path``; each ``raw`` placeholder string (a value in the
    document) is replaced by the raw JSON text given for it (``1e400``, ``NaN``, nesting)."""
    text = json.dumps(document)
    for placeholder, value in (raw or {}).items():
        text = text.replace(json.dumps(placeholder), value)
    path.write_text(text)
    return path


def assert_one_line(err: AcdError, path: Path, *parts: str) -> None:
    """The error is one line naming the file and each of ``parts`` (the field, ...)."""
    message = str(err)
    assert "\n" not in message and str(path) in message, message
    for part in parts:
        assert part in message, (part, message)


def assert_cli_refuses(capsys, argv: list[str], message: str | None = None) -> None:
    """``acd ARGV`` exits 2 with one `acd: error:` line (``message`` when given) and no
    traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("acd: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    if message is not None:
        assert errors[0] == f"acd: error: {message}"


# --------------------------------------------------------------------------------------------
# circuit.json: the known failing inputs


def _set(*path_and_value):
    """A change that sets document[path...] = value."""
    *path, value = path_and_value

    def change(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _all_nan(d):
    d["scores"] = ["NaN"] * len(d["scores"])


CIRCUIT_CASES = [
    # (change, raw JSON texts, the field the message names)
    pytest.param(_set("edges", "input->m0"), {}, "edges: expected a list", id="edges-str"),
    pytest.param(_set("edges", [["input"]]), {}, "edges[0]: expected a [source", id="edge-1"),
    pytest.param(_set("edges", [[0, 1]]), {}, "edges[0]", id="edge-ints"),
    pytest.param(_set("seed", "0"), {}, "seed: expected an integer", id="seed-str"),
    pytest.param(_set("seed", 1.5), {}, "seed: expected an integer", id="seed-float"),
    pytest.param(_set("node_scores", [1.0]), {}, "node_scores: expected an object", id="ns"),
    pytest.param(
        _set("node_scores", {"a9.h9": 1.0}), {}, "node_scores: 'a9.h9' is not a node", id="ns-x"
    ),
    pytest.param(_set("node_scores", {"m0": "high"}), {}, "node_scores.m0", id="ns-value"),
    pytest.param(_set("versions", ["2.13"]), {}, "versions: expected an object", id="versions"),
    pytest.param(_set("versions", "torch", 2), {}, "versions.torch: expected a str", id="v-int"),
    pytest.param(_set("metrics", 0.9), {}, "metrics: expected an object", id="metrics"),
    pytest.param(
        _set("metrics", "faithfulness", "abc"), {}, "metrics.faithfulness", id="faith-abc"
    ),
    pytest.param(_set("metrics", "n_prompts", 8.0), {}, "metrics.n_prompts", id="metric-int"),
    pytest.param(_set("params", [1]), {}, "params: expected an object", id="params"),
    pytest.param(_set("params", "edges", "12"), {}, "params.edges", id="params-edges"),
    pytest.param(
        _set("params", "ablation", "blur"),
        {},
        "params.ablation: expected 'corrupted', 'zero' or 'mean', got 'blur'",
        id="ablation",
    ),
    pytest.param(_set("params", "extra", [1]), {}, "params.extra", id="params-extra-list"),
    pytest.param(_set("scores", 3, "@"), {"@": "1e400"}, "scores[3]: expected a fin", id="1e400"),
    pytest.param(_set("scores", 3, "@"), {"@": "1e999"}, "scores[3]", id="1e999"),
    pytest.param(_set("scores", 3, "@"), {"@": "NaN"}, "scores[3]", id="nan-literal"),
    pytest.param(_set("scores", 3, "NaN"), {}, "scores[3]", id="nan-string"),
    pytest.param(_set("scores", 3, True), {}, "scores[3]", id="score-true"),
    pytest.param(_set("scores", 3, "0.5"), {}, "scores[3]: expected a finite", id="score-str"),
    pytest.param(_set("scores", 3, 1e300), {}, "scores[3]: beyond the range", id="score-f32"),
    pytest.param(_all_nan, {}, "scores[0]: expected a finite number", id="all-nan"),
    pytest.param(_set("scores", [0.0]), {}, "scores: 1 scores for a graph of", id="n-scores"),
    pytest.param(
        _set("graph", "n_layers", 4.0), {}, "graph.n_layers: expected an integer", id="nl-4.0"
    ),
    pytest.param(_set("graph", "n_layers", 10**6), {}, "graph.n_src is 11 but", id="nl-huge"),
    pytest.param(_set("graph", "has_mlp", "no"), {}, "graph.has_mlp: expected true", id="mlp"),
    pytest.param(_set("graph", "n_kv_heads", 3), {}, "graph.n_kv_heads", id="kv"),
    pytest.param(_set("format_version", True), {}, "format_version", id="version-true"),
    pytest.param(_set("format_version", 2), {}, "format version 2 is not", id="version-2"),
    pytest.param(_set("format", 1), {}, "not an acd circuit file", id="format"),
    pytest.param(_set("task", None), {}, "task: expected a string, got None", id="task-null"),
    pytest.param(_set("task", 3), {}, "task: expected a string", id="task-int"),
    pytest.param(_set("task", ["ioi"]), {}, "task: expected a string", id="task-list"),
    pytest.param(_set("model", None), {}, "model: expected an object", id="model-null"),
    pytest.param(_set("model", "name", 3), {}, "model.name: expected a string", id="model-int"),
    pytest.param(_set("model", "name", ["t"]), {}, "model.name", id="model-list"),
    pytest.param(_set("model", "sha256", "xyz"), {}, "model.sha256", id="sha"),
    pytest.param(_set("method", None), {}, "method: expected a string", id="method-null"),
    pytest.param(_set("method", 1), {}, "method: expected a string", id="method-int"),
    pytest.param(_set("method", ["eap"]), {}, "method: expected a string", id="method-list"),
    pytest.param(_set("created", "yesterday"), {}, "created: expected an ISO", id="created"),
    pytest.param(_set("colour", "red"), {}, "unknown field 'colour'", id="unknown-field"),
    pytest.param(_set("params", "@"), {"@": DEEP}, "nested too deeply", id="deep-inside"),
    pytest.param(_set("seed", "@"), {"@": "9" * 5000}, "not valid JSON", id="5000-digits"),
    pytest.param(_set("task", "@"), {"@": '"\\ud800"'}, "lone surrogate", id="surrogate"),
    pytest.param(
        _set("task_source", {"kind": "url", "name": "x", "path": None, "sha256": None}),
        {},
        "task_source.kind",
        id="task-source",
    ),
    pytest.param(
        _set("task_source", {"kind": "file", "name": "x", "path": None, "sha256": None}),
        {},
        'task_source of kind "file" needs its path',
        id="task-source-file",
    ),
    pytest.param(
        _set("prompt_split", "in_sample", "yes"), {}, "prompt_split.in_sample", id="split"
    ),
]


def _bad_circuit(tmp_path, document, change, raw) -> Path:
    bad = copy.deepcopy(document)
    change(bad)
    return write(tmp_path / "BAD.json", bad, raw)


@pytest.mark.parametrize(("change", "raw", "field"), CIRCUIT_CASES)
def test_circuit_file_mistakes_are_one_line(tmp_path, document, change, raw, field):
    path = _bad_circuit(tmp_path, document, change, raw)
    with pytest.raises(AcdError) as err:
        load_circuit(path)
    assert_one_line(err.value, path, field)


@pytest.mark.parametrize(("change", "raw", "field"), CIRCUIT_CASES)
def test_render_and_evaluate_refuse_them_with_exit_2(
    tmp_path, capsys, document, change, raw, field
):
    path = _bad_circuit(tmp_path, document, change, raw)
    with pytest.raises(AcdError) as err:
        load_circuit(path)
    for command in ("render", "evaluate"):
        assert_cli_refuses(capsys, [command, str(path)], str(err.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BAD.json"]  # nothing written


def test_deeply_nested_json_is_refused_by_the_reader(tmp_path):
    path = tmp_path / "BAD.json"
    path.write_text(DEEP)
    for read in (load_circuit, load_any_circuit, read_eapig_json):
        with pytest.raises(AcdError) as err:
            read(path)
        assert_one_line(err.value, path, "not valid JSON (nested too deeply)")


def test_deeply_nested_json_is_refused_by_the_command_line(tmp_path, capsys):
    path = tmp_path / "BAD.json"
    path.write_text(DEEP)
    assert_cli_refuses(capsys, ["render", str(path)], f"{path}: not valid JSON (nested too deeply)")


def test_a_circuit_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    path = tmp_path / "BAD.json"
    data = b'{"format": "acd-circuit", "task": "caf\xe9"}'
    path.write_bytes(data)
    with pytest.raises(AcdError) as err:
        load_circuit(path)
    assert_one_line(err.value, path, f"not UTF-8 text (byte 0xe9 at offset {data.index(0xE9)})")
    assert_cli_refuses(capsys, ["render", str(path)])


def test_an_edge_listed_twice_is_refused(tmp_path, document):
    bad = copy.deepcopy(document)
    bad["edges"].append(bad["edges"][0])
    path = write(tmp_path / "BAD.json", bad)
    with pytest.raises(AcdError) as err:
        load_circuit(path)
    k = len(bad["edges"]) - 1
    assert_one_line(err.value, path, f"edges[{k}]: {' -> '.join(bad['edges'][0])} is listed twice")


def test_only_the_first_problem_is_named_with_a_count_of_the_rest(tmp_path, document):
    bad = copy.deepcopy(document)
    bad.update(task=1, method=2, seed="x")
    with pytest.raises(
        AcdError, match=r": task: expected a string, got 1 \(and 2 more problems\)$"
    ):
        load_circuit(write(tmp_path / "BAD.json", bad))


# --------------------------------------------------------------------------------------------
# circuit.json: what acd writes reads back, exactly


def committed_circuits() -> list[Path]:
    files = sorted(REPO.glob("graphs/**/*.json"))
    return [p for p in files if '"format": "acd-circuit"' in p.read_text()[:200]]


def test_the_gallery_and_the_references_are_found():
    names = {p.relative_to(REPO).as_posix() for p in committed_circuits()}
    assert "graphs/toy/ioi/eap-ig/circuit.json" in names
    assert "graphs/reference/gpt2-small/ioi.json" in names and len(names) >= 6


@pytest.mark.parametrize("path", committed_circuits(), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_committed_circuit_reads_back_to_the_same_document(path):
    document = json.loads(path.read_text())
    assert circuit_to_dict(load_circuit(path)) == document


def test_a_discovered_circuit_reads_back_to_the_same_document(tmp_path, gpt2):
    text = circuit_text(gpt2[0])
    document = json.loads(text)
    assert {"task_source", "prompt_split"} <= set(document)  # the optional fields, written
    circuit = load_circuit(write(tmp_path / "c.json", document))
    assert circuit_to_dict(circuit) == document
    assert circuit.task_source.kind == "file" and circuit.prompt_split is not None


def test_files_without_the_optional_fields_read_with_their_defaults(document):
    old = {k: v for k, v in document.items() if k not in ("task_source", "prompt_split")}
    for key in ("params", "seed", "metrics", "versions", "created", "node_scores"):
        del old[key]
    old["model"] = {"name": "toy"}
    old["graph"] = {
        k: v
        for k, v in old["graph"].items()
        if not k.startswith("n_") or k in ("n_layers", "n_heads", "n_kv_heads")
    }
    circuit = circuit_from_dict(old)
    assert (circuit.params, circuit.seed, circuit.metrics, circuit.versions) == ({}, 0, {}, {})
    assert (circuit.created, circuit.node_scores, circuit.model_sha256) == ("", {}, "")
    assert circuit.task_source is None and circuit.prompt_split is None
    assert circuit.edges == [tuple(e) for e in document["edges"]]


def test_nonfinite_metrics_are_strings_and_read_back(tmp_path, document):
    changed = copy.deepcopy(document)
    changed["metrics"].update(faithfulness="NaN", kl_to_full="Infinity", low="-Infinity")
    circuit = load_circuit(write(tmp_path / "c.json", changed))
    assert circuit.metrics["kl_to_full"] == float("inf") and circuit.metrics["low"] < 0
    assert circuit_to_dict(circuit)["metrics"] == changed["metrics"]


def test_the_writer_refuses_nonfinite_scores(tmp_path, gpt2):
    """All-NaN scores would draw as grey edges with "widest 0": the writer refuses them, as
    the reader does, so acd never writes a file it cannot read."""
    graph = gpt2[1]
    for bad in (float("nan"), float("inf")):
        scores = torch.full((graph.n_src, graph.n_dst), bad)
        circuit = Circuit(graph, graph.valid.clone(), scores, "t", "m", "eap")
        with pytest.raises(AcdError, match=r"^cannot write the circuit: \d+ edge scores are not"):
            save_circuit_json(circuit, tmp_path / "c.json")
        assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("layers", [1, 2, 5])
@pytest.mark.parametrize("heads, kv", [(1, 1), (4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("mlp, parallel", [(True, False), (True, True), (False, False)])
def test_graph_sizes_by_arithmetic_equal_the_built_graph(layers, heads, kv, mlp, parallel):
    shape = GraphShape(layers, heads, kv, mlp, parallel)
    graph = ComputeGraph(shape)
    assert graph_sizes(shape) == (graph.n_src, graph.n_dst, graph.n_edges)


# --------------------------------------------------------------------------------------------
# EAP-IG graph JSON


@pytest.fixture(scope="module")
def eapig(gpt2) -> dict:
    return json.loads(eapig_text(gpt2[0]))


EAPIG_CASES = [
    pytest.param(
        _set("edges", "input->a0.h0<q>", "score", "high"),
        "edges['input->a0.h0<q>'].score: expected a finite number, got 'high'",
        id="score-str",
    ),
    pytest.param(_set("edges", "input->a0.h0<q>", "score", True), "edges[", id="score-true"),
    pytest.param(_set("edges", "input->a0.h0<q>", "in_graph", "yes"), "in_graph", id="in-graph"),
    pytest.param(_set("edges", "input->a0.h0<q>", 0.5), "expected an object", id="edge-num"),
    pytest.param(_set("nodes", "m0", "score", "x"), "nodes.m0.score", id="node-score"),
    pytest.param(_set("nodes", "m0", 5), "nodes.m0: expected an object", id="node-int"),
    pytest.param(_set("cfg", "n_layers", "2"), "cfg.n_layers: expected an integer", id="cfg"),
    pytest.param(_set("cfg", "n_layers", 10**6), "cfg: a 1000000-layer", id="cfg-huge"),
    pytest.param(_set("cfg", "parallel_attn_mlp", 1), "cfg.parallel_attn_mlp", id="cfg-bool"),
    pytest.param(_set("edges", "a9.h0->logits", {}), "edge 'a9.h0->logits' is not in", id="e"),
    pytest.param(_set("nodes", "a9.h0", True), "node 'a9.h0' is not in this graph", id="node"),
]


@pytest.mark.parametrize(("change", "field"), EAPIG_CASES)
def test_eapig_file_mistakes_are_one_line(tmp_path, capsys, eapig, change, field):
    bad = copy.deepcopy(eapig)
    change(bad)
    path = write(tmp_path / "BAD.json", bad)
    with pytest.raises(AcdError) as err:
        read_eapig_json(path)
    assert_one_line(err.value, path, field)
    assert_cli_refuses(capsys, ["render", str(path)], str(err.value))


def test_eapig_nan_node_scores_mean_none_and_the_file_reads_back(tmp_path, gpt2, eapig):
    changed = copy.deepcopy(eapig)
    changed["nodes"]["m0"]["score"] = "@"
    circuit = read_eapig_json(write(tmp_path / "g.json", changed, {"@": "NaN"}))
    assert circuit.node_scores == {}
    found = json.loads(circuit_text(gpt2[0]))
    assert circuit.edges == [tuple(edge) for edge in found["edges"]]


# --------------------------------------------------------------------------------------------
# Task files: the known failing inputs


@pytest.fixture
def tasks(tmp_path) -> Path:
    return task_folder(tmp_path)


TEMPLATE = (
    'name = "x"\nkind = "template"\nanswer = " {A}"\nwrong = " {B}"\n'
    '[lists]\nn = { values = ["Mary", "John"] }\n[variables]\nA = "n"\nB = "n"\n'
    '[[templates]]\nclean = "when {A} and {B} went"\ncorrupted = "when {B} and {A} went"\n'
)

TASK_CASES = [
    # (file name, bytes, what the message names)
    pytest.param("bad.toml", b'kind = "template"\nlists = {\n', "is not valid TOML", id="toml-{"),
    pytest.param(
        "bad.toml",
        TEMPLATE.replace('"when {A} and', '"when {A and').encode(),
        "'when {A and {B} went' is not a valid template",
        id="template-{",
    ),
    pytest.param(
        "bad.toml",
        b'kind = "template"\nvariables = "names"\n[[templates]]\nclean = "a"\ncorrupted = "b"\n',
        "variables: expected an object, got 'names'",
        id="variables-str",
    ),
    pytest.param(
        "bad.toml",
        b'kind = "induction"\npool = "induction_words.txt"\nhalf_length = "ten"\n',
        "half_length must be an integer >= 2 or [lo, hi]",
        id="half-length-ten",
    ),
    pytest.param(
        "bad.toml",
        TEMPLATE.split("[[templates]]")[0].replace("[lists]", "templates = []\n[lists]").encode(),
        "needs at least one [[templates]] entry",
        id="templates-empty",
    ),
    pytest.param(
        "bad.toml",
        TEMPLATE.replace('"when {A} and', '"when {A:>9} and').encode(),
        "only plain {name} placeholders",
        id="format-spec",
    ),
    pytest.param(
        "bad.toml", TEMPLATE.replace('["Mary", "John"]', "[]").encode(), "lists.n.values", id="[]"
    ),
    pytest.param(
        "bad.toml",
        TEMPLATE.replace('{ values = ["Mary", "John"] }', "{ range = [0, 10000000000] }").encode(),
        "holds more than 100000 entries",
        id="range-huge",
    ),
    pytest.param(
        "bad.toml",
        TEMPLATE.replace(
            '{ values = ["Mary", "John"] }', '{ range = [0, 9], format = "999999999d" }'
        ).encode(),
        "widths and precisions are at most 99",
        id="range-format-wide",
    ),
    pytest.param(
        "bad.toml",
        (TEMPLATE + '[prefix]\nlist = "n"\ncount = 1000000000\n').encode(),
        "prefix.count must be",
        id="prefix-count-huge",
    ),
    pytest.param(
        "bad.toml",
        TEMPLATE.replace('name = "x"', "tmplates = 1").encode(),
        "unknown key 'tmplates'",
        id="unknown-key",
    ),
    pytest.param(
        "bad.toml", TEMPLATE.replace('name = "x"', "name = 5").encode(), "name:", id="name-int"
    ),
    pytest.param("bad.toml", b'kind = "caf\xe9"\n', "not UTF-8 text", id="toml-latin1"),
    pytest.param(
        "bad.toml",
        b'kind = "template"\nx = ' + b"[" * 5000 + b"]" * 5000 + b"\n",
        "nested too deeply",
        id="toml-deep",
    ),
    pytest.param(
        "bad.toml",
        b'kind = "induction"\npool = "induction_words.txt"\nhalf_length = [3, 100]\n',
        "needs 200 distinct words",
        id="pool-size",
    ),
    pytest.param(
        "bad.toml",
        (
            TEMPLATE.replace('answer = " {A}"\nwrong = " {B}"\n', "")
            + '[answers]\ncorrect = { list = "n", compare = ">", with = "A" }\n'
            + 'wrong = { list = "n", compare = "<=", with = "A" }\n'
        ).encode(),
        "[answers] compares list 'n' as integers, but it holds 'Mary'",
        id="answers-not-integers",
    ),
    pytest.param(
        "bad.jsonl",
        b'{"clean": "a", "corrupted": "b"}\n[1,2,3]\n',
        "line 2: expected a JSON object with clean and corrupted, got [1, 2, 3]",
        id="jsonl-list",
    ),
    pytest.param(
        "bad.jsonl",
        b'{"clean": 5, "corrupted": "b"}\n',
        "line 1: clean: expected a non-empty string, got 5",
        id="jsonl-clean-int",
    ),
    pytest.param(
        "bad.jsonl",
        b'{"clean": "a", "corrupted": "b", "correct_idx": 4.0}\n',
        "line 1: correct_idx: expected a token id",
        id="jsonl-idx-float",
    ),
    pytest.param("bad.jsonl", b"[" * 100_000 + b"\n", "line 1: not valid JSON", id="jsonl-deep"),
    pytest.param("bad.csv", b"clean,corrupted\ncaf\xe9,b\n", "not UTF-8 text", id="csv-latin1"),
    pytest.param(
        "bad.csv", b"clean,corrupted\na,b,c\n", "row 1 (line 2): 3 cells, but", id="csv-cells"
    ),
    pytest.param(
        "bad.csv", b"clean,clean\na,b\n", "names column 'clean' twice", id="csv-duplicate"
    ),
    pytest.param(
        "bad.csv",
        b"clean,corrupted\n" + b'"' + b"a" * 200_000 + b'",b\n',
        "not valid CSV (field larger than field limit",
        id="csv-field-limit",
    ),
    pytest.param("bad.csv", b"clean,corrupted\n", "has no rows", id="csv-empty"),
]


@pytest.mark.parametrize(("name", "data", "message"), TASK_CASES)
def test_task_file_mistakes_are_one_line(tasks, name, data, message):
    path = tasks / name
    path.write_bytes(data)
    with pytest.raises(TaskError) as err:
        load_task(path)
    assert_one_line(err.value, path, message)


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        case
        for case in TASK_CASES
        if case.id
        in (
            "toml-{",
            "template-{",
            "variables-str",
            "half-length-ten",
            "templates-empty",
            "jsonl-list",
            "jsonl-clean-int",
            "csv-latin1",
        )
    ],
)
def test_discover_refuses_them_with_exit_2(tasks, capsys, tiny_gpt2_dir, name, data, message):
    path = tasks / name
    path.write_bytes(data)
    out = tasks / "out"
    argv = ["discover", str(path), "--model", str(tiny_gpt2_dir), "--method", "eap"]
    assert_cli_refuses(capsys, [*argv, "--threads", "1", "--out", str(out)])
    assert not out.exists()


def test_every_shipped_task_file_reads(tasks):
    for path in sorted(tasks.glob("*.toml")) + sorted((REPO / "tasks" / "varied").glob("*.toml")):
        task = load_task(path)
        assert task.prompt_pairs(3, seed=0)
    jsonl, csv = load_task(tasks / "pairs.jsonl"), load_task(tasks / "pairs.csv")
    assert jsonl.rows == csv.rows and len(jsonl.rows) == 24
    assert load_task(tasks / "pairs.toml").rows == jsonl.rows


def test_pair_files_read_token_ids_and_aliases(tasks):
    path = tasks / "ids.jsonl"
    path.write_text(
        '{"clean": "a", "corrupted": "b", "correct_idx": [3, 4], "incorrect_idx": "7",'
        ' "answer": "", "correct": [" x"], "wrong_idx": 9, "note": {"any": [1]}}\n'
    )
    (row,) = load_task(path).rows
    assert (row.answers, row.wrongs, row.answer_ids, row.wrong_ids) == ((" x",), (), (3, 4), (7,))
    path = tasks / "ids.csv"
    path.write_bytes('\ufeffclean,corrupted,correct_idx\na,b,"[1, 2]"\n'.encode())  # with a BOM
    (row,) = load_task(path).rows
    assert row.answer_ids == (1, 2) and row.clean == "a"


# --------------------------------------------------------------------------------------------
# ACDC checkpoints


@pytest.fixture(scope="module")
def checkpoint(gpt2):
    return checkpoint_case(*gpt2)


def load_checkpoint(case, path: Path) -> _SearchState:
    return _SearchState.load(path, case.header, case.graph, case.dtype, case.initial)


CHECKPOINT_CASES = [
    pytest.param(_set("kept", "all"), "kept: expected a list", id="kept-str"),
    pytest.param(_set("kept", 0, 10**9), "kept[0]: expected an edge index", id="kept-range"),
    pytest.param(_set("kept", 0, True), "kept[0]: expected an integer", id="kept-bool"),
    pytest.param(_set("deltas", 0, 1, "0.5"), "deltas[0]: expected an [edge", id="delta-str"),
    pytest.param(_set("deltas", 0, 1, "@"), "deltas[0]", id="delta-nan"),
    pytest.param(_set("deltas", 0, [1]), "deltas[0]: expected an [edge index", id="delta-pair"),
    pytest.param(_set("next_destination", 999), "next_destination: expected -1 ..", id="next"),
    pytest.param(_set("next_destination", 3.0), "next_destination: expected an int", id="n-f"),
    pytest.param(_set("visited", 3), "visited: 3 edges tested, but", id="visited"),
    pytest.param(_set("visited", -1), "visited: expected an integer >= 0", id="visited-neg"),
    pytest.param(_set("tau", "0.001"), "tau: expected a finite number", id="tau-str"),
    pytest.param(_set("n_prompts", True), "n_prompts: expected an integer", id="n-prompts"),
    pytest.param(_set("graph", [11]), "graph: expected at least 2 item(s)", id="graph"),
    pytest.param(_set("colour", 1), "unknown field 'colour'", id="unknown"),
    pytest.param(_set("kept", []), "kept: a destination not visited yet", id="kept-none"),
]


@pytest.mark.parametrize(("change", "field"), CHECKPOINT_CASES)
def test_checkpoint_mistakes_are_one_line(tmp_path, checkpoint, change, field):
    saved = json.loads(checkpoint.text)
    change(saved)
    path = write(tmp_path / "acdc.json", saved, {"@": "NaN"})
    with pytest.raises(AcdcError) as err:
        load_checkpoint(checkpoint, path)
    assert_one_line(err.value, path, field, "delete it or pass another checkpoint path")


def test_a_checkpoint_that_is_not_utf8_or_nested_too_deeply_is_one_line(tmp_path, checkpoint):
    path = tmp_path / "acdc.json"
    for data, message in (
        (b'{"format": "\xff"}', ": not UTF-8 text (byte 0xff at offset 12)"),
        (DEEP.encode(), ": not valid JSON (nested too deeply)"),
    ):
        path.write_bytes(data)
        with pytest.raises(AcdcError) as err:
            load_checkpoint(checkpoint, path)
        assert_one_line(err.value, path, f"the ACDC checkpoint {path}{message}")


def test_a_checkpoint_read_back_is_the_state_written(tmp_path, checkpoint):
    path = tmp_path / "acdc.json"
    path.write_text(checkpoint.text)
    state = load_checkpoint(checkpoint, path)
    saved = json.loads(checkpoint.text)
    assert sorted(state.kept.flatten().nonzero().flatten().tolist()) == sorted(saved["kept"])
    assert state.next_dst == saved["next_destination"] and state.visited == saved["visited"]
    assert json.loads(state.to_json(checkpoint.header)) == saved


def test_a_kept_edge_outside_the_candidates_is_refused(tmp_path, checkpoint):
    """hybrid starts from candidates: a checkpoint keeping an edge outside them is not one
    its search could have written."""
    path = tmp_path / "acdc.json"
    path.write_text(checkpoint.text)
    saved = json.loads(checkpoint.text)
    candidates = checkpoint.initial.clone().flatten()
    candidates[saved["kept"][0]] = False
    with pytest.raises(AcdcError, match="kept: holds an edge the search did not start from"):
        _SearchState.load(
            path,
            checkpoint.header,
            checkpoint.graph,
            checkpoint.dtype,
            candidates.view_as(checkpoint.initial),
        )


def test_the_circuit_schemas_literals_name_exactly_the_registries():
    """The schema spells its choices out (a type checker reads them); they must stay the
    engine's own lists."""
    from typing import get_args

    from acd.attribution import METHODS
    from acd.formats import circuit as schema
    from acd.patching import ABLATIONS
    from acd.search import SELECTIONS
    from acd.tasks import METRIC_NAMES

    assert set(get_args(schema.MetricName)) == {*METRIC_NAMES, "task"}
    assert set(get_args(schema.Ablation)) == set(ABLATIONS)
    assert set(get_args(schema.Selection)) == set(SELECTIONS)
    assert set(get_args(schema.ScoringMethod)) == set(METHODS)
