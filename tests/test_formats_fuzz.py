"""Property tests of the file schemas (acd/formats/): valid files written by acd's own writers
on the tiny models (tests/format_files.py) are mutated at random, and every mutation is either
read back equal in meaning to what it says, or refused with one AcdError line naming the file;
never another exception, never a hang, never accepted garbage.

"Equal in meaning" is checked against an oracle per kind: circuit.json by writing the circuit
read back (acd's writer is the format's definition) and comparing it with the mutated document;
checkpoints, task TOMLs and pair files field by field against what the document says.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from format_files import (
    REPO,
    checkpoint_case,
    circuit_text,
    csv_text,
    eapig_text,
    jsonl_text,
    pair_rows,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acd.acdc import _SearchState
from acd.errors import AcdError, TaskError
from acd.export import circuit_to_dict, load_circuit, read_eapig_json
from acd.tasks import METRIC_NAMES, load_task

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOWEST_READ_S = 5.0  # a read slower than this counts as a hang


# --------------------------------------------------------------------------------------------
# Mutating JSON documents


NAMES = ["input", "logits", "m0", "m1", "a0.h1", "a1.h3", "a1.h3<k>", "a0.h0<q>", "a9.h9"]
WORDS = ["", "NaN", "Infinity", "-Infinity", "0.5", "no", "abc", "ioi", "eap", "kl", "zero"]
WORDS += ["logit_diff", "corrupted", "builtin", "file", "2026-01-31T12:00:00Z", "a" * 64]

# Any JSON value, of every type, including the awkward ones.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-3, max_value=300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES + WORDS),
    st.text(max_size=6),
    st.lists(st.integers(min_value=-1, max_value=300), max_size=3),
    st.lists(st.sampled_from(NAMES), min_size=2, max_size=2),
    st.lists(st.floats(allow_nan=False), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["kind", "name", "a", "score"]), st.integers(), max_size=2),
)
# Raw JSON text put in place of a value: what json.dumps would never write.
RAW_JSON = [
    "1e400",
    "-1e400",
    "1e999",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "1E2",
    "9" * 5000,
    "[" * 3000 + "]" * 3000,
    '"\\ud800"',
    '"\\u0000"',
    "[[[[[[[[[[1]]]]]]]]]]",
]


def all_paths(value, prefix=()):
    """Every location in a JSON value, the root first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from all_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from all_paths(item, (*prefix, index))


def get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


def tweak(draw, value, values=VALUES):
    """A value of the same type as ``value`` (so often still valid); ``values`` are what a
    list may gain."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return draw(
            st.one_of(
                st.integers(min_value=-3, max_value=300),
                st.floats(min_value=-1e3, max_value=1e3),
                st.sampled_from([0, 0.0, -0.0, 1e-45, 3.4e38, 1e39, value + 1]),
            )
        )
    if isinstance(value, str):
        return draw(st.one_of(st.sampled_from(NAMES + WORDS), st.text(max_size=4)))
    if isinstance(value, list) and value:
        items = list(value)
        choice = draw(st.sampled_from(["drop", "duplicate", "shuffle", "append"]))
        index = draw(st.integers(min_value=0, max_value=len(items) - 1))
        if choice == "drop":
            del items[index]
        elif choice == "duplicate":
            items.insert(index, copy.deepcopy(items[index]))
        elif choice == "shuffle":
            random.Random(draw(st.integers(0, 99))).shuffle(items)
        else:
            items.append(draw(values))
        return items
    if isinstance(value, dict) and value:
        items = dict(value)
        del items[draw(st.sampled_from(sorted(items)))]
        return items
    return draw(values)


@st.composite
def mutated_json(draw, document, extra_keys=()):
    """The text of ``document`` after one to three random mutations: set a value (any JSON
    value, or raw text such as 1e400 or deep nesting), tweak it within its type, delete it,
    add a key; and sometimes damage the text itself (truncate, insert or delete characters)."""
    doc = copy.deepcopy(document)
    raw: dict[str, str] = {}
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = list(all_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["set", "raw", "tweak", "tweak", "delete", "add"]))
        if op == "add" or not path:
            target = get(doc, path[:-1]) if path else doc
            if isinstance(target, dict):
                key = draw(st.sampled_from([*extra_keys, "colour", "score", "kind", "n_layers"]))
                target[key] = draw(VALUES)
            continue
        parent, key = get(doc, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "raw":
            placeholder = f"\x00raw{len(raw)}"
            raw[placeholder] = draw(st.sampled_from(RAW_JSON))
            parent[key] = placeholder
        elif op == "set":
            parent[key] = draw(VALUES)
        else:
            parent[key] = tweak(draw, parent[key])
    text = json.dumps(doc)  # NaN and infinities as Python writes them (not JSON)
    for placeholder, value in raw.items():
        text = text.replace(json.dumps(placeholder), value)
    return damaged(draw, text)


def damaged(draw, text: str) -> str:
    """``text``, or one in four times with a random piece of it cut, changed or inserted."""
    if draw(st.integers(min_value=0, max_value=3)):
        return text
    at = draw(st.integers(min_value=0, max_value=len(text)))
    choice = draw(st.sampled_from(["truncate", "cut", "insert"]))
    if choice == "truncate":
        return text[:at]
    if choice == "cut":
        return text[:at] + text[at + draw(st.integers(min_value=1, max_value=20)) :]
    return (
        text[:at] + draw(st.sampled_from(['"', ",", "{", "]", "\x00", "\\", "é", " 1"])) + text[at:]
    )


def same(a, b) -> bool:
    """Equal JSON meaning: numbers by value (int or float, NaN equal to NaN), booleans apart
    from numbers, lists and tuples alike, everything else by type and value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def read_or_refusal(read, path: Path, error=AcdError):
    """``read(path)``, or None when it was refused with one ``error`` line naming the file;
    any other exception, a message of several lines and a slow read fail the test."""
    start = time.perf_counter()
    try:
        return read(path)
    except error as refused:
        message = str(refused)
        assert "\n" not in message and str(path) in message, message
        return None
    finally:
        assert time.perf_counter() - start < SLOWEST_READ_S, "the read took too long"


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    return tiny_models["gpt2"]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------------------------
# circuit.json


def expected_circuit_document(doc: dict, written: dict) -> dict:
    """What the writer must give for an accepted ``doc``: ``doc`` with the defaults of the
    optional fields, the graph sizes where ``doc`` leaves them out, the scores rounded to
    float32 (the scores' type) and the kept edges in index order (their order means nothing)."""
    expected = copy.deepcopy(doc)
    defaults = {"params": {}, "seed": 0, "metrics": {}, "versions": {}, "created": ""}
    for key, value in {**defaults, "node_scores": {}}.items():
        expected.setdefault(key, value)
    expected["model"].setdefault("sha256", "")
    for key in ("task_source", "prompt_split", "edge_inclusion", "positions"):  # null: none
        if expected.get(key, 0) is None:
            del expected[key]
    for key in ("n_src", "n_dst", "n_edges"):  # absent or null: not recorded, the writer's
        if expected["graph"].get(key) is None:
            expected["graph"][key] = written["graph"][key]
    expected["scores"] = [torch.tensor(float(s)).item() for s in expected["scores"]]
    order = {tuple(edge): k for k, edge in enumerate(written["edges"])}
    assert {tuple(edge) for edge in expected["edges"]} == set(order)
    if "edge_inclusion" in expected:  # one value per kept edge, in the edges' order (float32)
        value = dict(zip(map(tuple, expected["edges"]), expected["edge_inclusion"]))
        ordered = sorted(value, key=lambda edge: order[edge])
        expected["edge_inclusion"] = [torch.tensor(float(value[e])).item() for e in ordered]
    expected["edges"] = sorted(expected["edges"], key=lambda edge: order[tuple(edge)])
    return expected


@FUZZ
@given(data=st.data())
def test_circuit_files_read_back_equal_or_are_refused(gpt2, scratch, data):
    document = json.loads(circuit_text(gpt2[0]))
    text = data.draw(
        mutated_json(document, extra_keys=("task_source", "prompt_split", "edge_inclusion"))
    )
    path = scratch / "circuit.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    circuit = read_or_refusal(load_circuit, path)
    if circuit is None:
        return
    doc = json.loads(text)
    written = circuit_to_dict(circuit)
    assert same(written, expected_circuit_document(doc, written))


def test_the_circuit_fuzzer_reaches_both_outcomes(gpt2, scratch):
    """The mutations are neither all refused nor all accepted (else the property above would
    test little): over 200 of them both outcomes occur, refusals naming many fields."""
    document = json.loads(circuit_text(gpt2[0]))
    outcomes = {"accepted": 0, "refused": 0}
    fields = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(data=st.data())
    def run(data):
        text = data.draw(mutated_json(document))
        path = scratch / "count.json"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        try:
            load_circuit(path)
            outcomes["accepted"] += 1
        except AcdError as err:
            outcomes["refused"] += 1
            fields.add(str(err).split(": ")[1].split("[")[0])

    run()
    assert outcomes["accepted"] >= 20 and outcomes["refused"] >= 20, outcomes
    assert len(fields) >= 8, fields


# --------------------------------------------------------------------------------------------
# EAP-IG graph JSON


@FUZZ
@given(data=st.data())
def test_eapig_files_read_back_equal_or_are_refused(gpt2, scratch, data):
    document = json.loads(eapig_text(gpt2[0]))
    text = data.draw(mutated_json(document))
    path = scratch / "graph.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    circuit = read_or_refusal(read_eapig_json, path)
    if circuit is None:
        return
    doc = json.loads(text)
    graph = circuit.graph
    cfg = doc["cfg"]
    assert (graph.n_layers, graph.n_heads, graph.n_kv_heads) == (
        cfg["n_layers"],
        cfg["n_heads"],
        cfg["n_heads"],
    )
    assert graph.shape.parallel_attn_mlp is cfg.get("parallel_attn_mlp", False)
    assert graph.shape.has_mlp is not cfg.get("attn_only", False)
    mask = torch.zeros_like(circuit.mask)
    scores = torch.zeros_like(circuit.scores)
    for name, edge in doc["edges"].items():
        i, j = graph.edge_index(*name.split("->"))
        mask[i, j] = edge.get("in_graph", False) is True
        scores[i, j] = float(edge.get("score") or 0.0)
    assert torch.equal(mask, circuit.mask) and torch.equal(scores, circuit.scores)
    node_scores = {}
    for name, node in doc["nodes"].items():
        score = node.get("score") if isinstance(node, dict) else None
        if score is not None and not math.isnan(score):
            node_scores[name] = score
    assert same(circuit.node_scores, node_scores)


# --------------------------------------------------------------------------------------------
# ACDC checkpoints


@pytest.fixture(scope="module")
def checkpoint(gpt2):
    return checkpoint_case(*gpt2)


def assert_state_is_the_document(state, doc: dict, case) -> None:
    """An accepted checkpoint: this run's header, and a state that is what the document says
    and that an ACDC search over the initial circuit could have reached."""
    assert set(doc) == set(case.header) | {"kept", "deltas", "next_destination", "visited"}
    assert all(same(doc[key], value) for key, value in case.header.items())
    n_src, n_dst = case.initial.shape
    kept = torch.zeros(n_src * n_dst, dtype=torch.bool)
    kept[doc["kept"]] = True
    assert len(set(doc["kept"])) == len(doc["kept"])
    assert torch.equal(state.kept.flatten(), kept)
    deltas = torch.zeros(n_src * n_dst, dtype=case.dtype)
    for index, value in doc["deltas"]:
        deltas[index] = value
    assert torch.equal(state.deltas.flatten(), deltas)
    assert (state.next_dst, state.visited) == (doc["next_destination"], doc["visited"])
    visited = torch.arange(n_dst) > state.next_dst  # destinations done, from the last one down
    assert not bool((state.kept & ~case.initial).any())
    assert torch.equal(state.kept[:, ~visited], case.initial[:, ~visited])
    assert all(visited[index % n_dst] for index, _ in doc["deltas"])
    assert state.visited == int(case.initial[:, visited].sum())


@FUZZ
@given(data=st.data())
def test_checkpoints_read_back_equal_or_are_refused(checkpoint, scratch, data):
    document = json.loads(checkpoint.text)
    text = data.draw(mutated_json(document))
    path = scratch / "acdc.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")

    def read(p):
        return _SearchState.load(
            p, checkpoint.header, checkpoint.graph, checkpoint.dtype, checkpoint.initial
        )

    state = read_or_refusal(read, path)
    if state is not None:
        assert_state_is_the_document(state, json.loads(text), checkpoint)


# --------------------------------------------------------------------------------------------
# Task TOML files


def toml_value(value) -> str:
    """``value`` as a TOML value (tables inline, so that one line holds each key)."""
    if isinstance(value, RawToml):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):  # JSON's escapes are TOML's, but for DEL
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    items = ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items())
    return "{" + items + "}"


class RawToml:
    def __init__(self, text: str):
        self.text = text


RAW_TOML = [
    "1979-05-27T07:32:00Z",
    "1979-05-27",
    "07:32:00",
    "nan",
    "-inf",
    "0x1F",
    "1_000",
    "'''multi\nline'''",
    "[" * 600 + "]" * 600,
    "[1, 'a', {x = 1}]",
]
TOML_VALUES = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-2, max_value=40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "names", "names.txt", "missing.txt", "{A", "x {IO} y", "{IO:>3}"]),
    st.sampled_from(["IO", "S", "template", "pairs", ">", "logprob", "kl", "02d", "q"]),
    st.text(max_size=5),
    st.lists(st.integers(min_value=-1, max_value=30), max_size=3),
    st.lists(st.sampled_from(["IO", "S", "N1", "a"]), max_size=3),
    st.dictionaries(st.sampled_from(["values", "range", "format", "list", "count"]), st.integers()),
    st.sampled_from([RawToml(t) for t in RAW_TOML]),
)


@st.composite
def mutated_toml(draw, document: dict):
    """A task TOML after one to three mutations of its parsed keys (set any TOML value,
    tweak it within its type, delete it, add a key), sometimes with its text damaged."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = [p for p in all_paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent, key = get(doc, path[:-1]), path[-1]
        op = draw(st.sampled_from(["set", "tweak", "tweak", "delete", "add"]))
        if op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["pool", "lists", "templtes", "count", "with"]))] = draw(
                TOML_VALUES
            )
        elif op == "delete":
            del parent[key]
        elif op == "set":
            parent[key] = draw(TOML_VALUES)
        else:
            parent[key] = tweak(draw, parent[key], TOML_VALUES)
    text = "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in doc.items())
    return damaged(draw, text)


def word_list(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def bounds(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def entries(spec, folder: Path) -> list[str]:
    if isinstance(spec, str):
        return word_list(folder / spec)
    if "values" in spec:
        return [v if isinstance(v, str) else str(v) for v in spec["values"]]
    lo, hi = spec["range"]
    return [format(i, spec.get("format", "d")) for i in range(lo, hi + 1)]


def assert_task_is_the_document(task, doc: dict, path: Path) -> None:
    """An accepted task file: the task holds what the file says, with the documented
    defaults, and every value of the type the docs give (nothing coerced)."""
    folder = path.parent
    assert same(task.name, doc.get("name", path.stem)) and task.name and task.name.isprintable()
    assert same(task.metric, doc.get("metric", "logit_diff")) and task.metric in METRIC_NAMES
    assert same(task.description, doc.get("description", ""))
    assert task.kind == doc["kind"]
    if task.kind == "template":
        assert same(task.variables, doc["variables"]) and task.templates
        assert all(list_name in task.lists for list_name in task.variables.values())
        assert same(task.templates, [[t["clean"], t["corrupted"]] for t in doc["templates"]])
        assert same(task.groups, [t.get("group", "") for t in doc["templates"]])
        for field in ("answer", "wrong"):
            value = doc.get(field, [])
            assert same(getattr(task, field), [value] if isinstance(value, str) else value)
        expected = {name: entries(spec, folder) for name, spec in doc.get("lists", {}).items()}
        assert same(task.lists, expected) and all(task.lists.values())
        assert all(isinstance(e, str) and e for entries_ in expected.values() for e in entries_)
        assert same(task.distinct, doc.get("constraints", {}).get("distinct", []))
        assert all(v in task.variables for group in task.distinct for v in group)
        prefix = doc.get("prefix")
        assert task.prefix_list == (prefix["list"] if prefix else None)
        assert same(task.prefix_count, bounds(prefix.get("count", 0)) if prefix else (0, 0))
        answers = doc.get("answers", {})
        assert same(task.answer_sets, {k: {"prefix": "", **v} for k, v in answers.items()})
    elif task.kind == "induction":
        assert same(task.pool, word_list(folder / doc["pool"]))
        assert len(set(task.pool)) == len(task.pool)
        assert same(task.half_lengths, bounds(doc.get("half_length", 10)))
        assert same(task.prefix_lengths, bounds(doc.get("prefix_length", 0)))
        assert 2 <= task.half_lengths[0] <= task.half_lengths[1] <= 10_000
    else:
        assert task.rows == load_task(folder / doc["file"]).rows
    try:  # the task makes prompts, or says in one line why it cannot
        pairs = task.prompt_pairs(3, seed=0)
    except TaskError as refused:
        assert "\n" not in str(refused)
    else:
        assert all(isinstance(p.clean, str) and isinstance(p.corrupted, str) for p in pairs)


@pytest.fixture(scope="module")
def task_files(scratch) -> Path:
    """The shipped tasks' word lists and a pair file, beside the TOMLs the fuzzer writes."""
    folder = scratch / "tasks"
    folder.mkdir()
    for path in (REPO / "tasks").glob("*.txt"):
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "pairs.jsonl").write_text(jsonl_text(pair_rows()))
    return folder


SHIPPED = ["ioi.toml", "greater_than.toml", "induction.toml"]
PAIRS_TOML = {"name": "pairs", "kind": "pairs", "metric": "prob_diff", "file": "pairs.jsonl"}


@pytest.mark.parametrize("base", [*SHIPPED, "pairs"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_task_files_read_back_equal_or_are_refused(task_files, base, data):
    shipped = base != "pairs"
    document = tomllib.loads((REPO / "tasks" / base).read_text()) if shipped else PAIRS_TOML
    text = data.draw(mutated_toml(document))
    path = task_files / "task.toml"
    path.write_text(text)
    task = read_or_refusal(load_task, path, TaskError)
    if task is not None:
        assert_task_is_the_document(task, tomllib.loads(text), path)


# --------------------------------------------------------------------------------------------
# Pair files (CSV, JSONL): an independent reading of the documented rules as the oracle


class Invalid(Exception):
    """What the documented rules refuse."""


def oracle_answers(value):
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise Invalid


def oracle_ids(value):
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip().startswith("[") else int(value)
        except (ValueError, RecursionError):
            raise Invalid from None
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(
        type(i) is int and 0 <= i < 2**63
        for i in ids  # noqa: E721 - bool is not an id
    ):
        raise Invalid
    return tuple(ids)


def oracle_pair(record) -> tuple:
    """(clean, corrupted, answers, wrongs, answer ids, wrong ids) by the documented rules."""
    if not isinstance(record, dict):
        raise Invalid
    for key in ("clean", "corrupted"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise Invalid

    def first(convert, *columns):
        values = [convert(record.get(c)) for c in columns]
        return next((v for v in values if v is not None), ())

    return (
        record["clean"],
        record["corrupted"],
        first(oracle_answers, "answer", "correct"),
        first(oracle_answers, "wrong", "incorrect"),
        first(oracle_ids, "correct_idx", "answer_idx"),
        first(oracle_ids, "incorrect_idx", "wrong_idx"),
    )


def has_lone_surrogate(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def oracle_jsonl(data: bytes) -> list[tuple]:
    text = data.decode("utf-8-sig")  # UnicodeDecodeError: Invalid below
    records = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            raise Invalid from None
        if has_lone_surrogate(record):
            raise Invalid
        records.append(oracle_pair(record))
    return records


def oracle_csv(data: bytes) -> list[tuple]:
    text = data.decode("utf-8-sig")
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error:
        raise Invalid from None
    if not rows:
        return []
    header = rows[0]
    if len(set(header)) != len(header) or any(len(row) != len(header) for row in rows[1:]):
        raise Invalid
    return [oracle_pair(dict(zip(header, row))) for row in rows[1:]]


def oracle_rows(data: bytes, suffix: str) -> list[tuple] | None:
    """The pairs the documented rules read from ``data``; None where they refuse it."""
    try:
        rows = oracle_csv(data) if suffix == ".csv" else oracle_jsonl(data)
    except (Invalid, UnicodeDecodeError):
        return None
    return rows or None


CELLS = st.one_of(
    st.sampled_from(["", "a", " Mary", "[1, 2]", "[]", "[-1]", "4.0", "-1", " 7 ", "true"]),
    st.sampled_from(["a,b", 'say "hi"', "two\nlines", "\r", "[[1]]", "9" * 30, "[1"]),
    st.text(max_size=5),
)
JSON_CELLS = st.one_of(CELLS, VALUES)
COLUMNS = ["clean", "corrupted", "answer", "correct", "wrong", "incorrect", "correct_idx"]
COLUMNS += ["answer_idx", "incorrect_idx", "wrong_idx", "note"]


@st.composite
def mutated_pairs(draw, suffix: str) -> bytes:
    """A pair file after one to three mutations of its rows (set, delete or add a column's
    value), then sometimes with its bytes damaged (cut, a stray byte, a line of another
    shape, a byte-order mark)."""
    rows = [dict(row) for row in pair_rows(6)]
    for row, ids in zip(rows, ([3], 4, "5", "[6, 7]", None, "")):
        row["correct_idx"] = ids
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        row = draw(st.sampled_from(rows))
        column = draw(st.sampled_from(COLUMNS))
        op = draw(st.sampled_from(["set", "set", "delete"]))
        if op == "delete" and suffix == ".jsonl":
            row.pop(column, None)
        else:
            row[column] = draw(CELLS if suffix == ".csv" else JSON_CELLS)
    if suffix == ".csv":
        columns = list(dict.fromkeys(c for row in rows for c in row))
        rows = [
            {c: "" if row.get(c) is None else str(row.get(c, "")) for c in columns} for row in rows
        ]
        data = csv_text(rows).encode()
    else:
        data = jsonl_text(rows).encode()
    if draw(st.integers(min_value=0, max_value=2)):
        return data
    at = draw(st.integers(min_value=0, max_value=len(data)))
    piece = draw(
        st.sampled_from(
            [b"", b"\xff", b"\x00", b"\n", b"\n\n", b'"', b",", b"\n[1,2,3]\n", b"\r\n"]
            + [b"\xef\xbb\xbf", b"\n" + b"[" * 3000 + b"\n", b'\n{"clean": "x"}\n']
        )
    )
    cut = draw(st.integers(min_value=0, max_value=8))
    return data[:at] + piece + data[at + cut :]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_pair_files_read_back_equal_or_are_refused(scratch, suffix, data):
    raw = data.draw(mutated_pairs(suffix))
    path = scratch / f"pairs{suffix}"
    path.write_bytes(raw)
    task = read_or_refusal(load_task, path, TaskError)
    expected = oracle_rows(raw, suffix)
    if task is None:
        assert expected is None, "a file the documented rules read was refused"
        return
    assert expected is not None, "a file the documented rules refuse was accepted"
    got = [
        (p.clean, p.corrupted, p.answers, p.wrongs, p.answer_ids, p.wrong_ids) for p in task.rows
    ]
    assert same(got, expected)


def test_the_toml_writer_of_these_tests_round_trips():
    """The fuzzer's TOML writer is faithful, so a refusal is the reader's, not the writer's."""
    for name in SHIPPED:
        document = tomllib.loads((REPO / "tasks" / name).read_text())
        text = "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in document.items())
        assert tomllib.loads(text) == document
    odd = {"s": 'a"b\\c\x7f\u2028é\n', "f": [1e-300, -0.0, 1.5e300], "t": {"k y": [{"a": 1}]}}
    text = "".join(f"{toml_value(str(k))} = {toml_value(v)}\n" for k, v in odd.items())
    assert tomllib.loads(text) == odd


def test_shipped_task_files_load_under_the_fuzzers_folder(task_files):
    """The base documents are valid where the fuzzer writes them (so mutations start valid)."""
    for name in SHIPPED:
        path = task_files / "task.toml"
        path.write_text((REPO / "tasks" / name).read_text())
        assert_task_is_the_document(load_task(path), tomllib.loads(path.read_text()), path)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p.csv"
        path.write_text(csv_text(pair_rows()))
        assert oracle_rows(path.read_bytes(), ".csv") == [
            (r["clean"], r["corrupted"], (r["answer"],), (r["wrong"],), (), ()) for r in pair_rows()
        ]
        assert re.search("Mary", path.read_text())
