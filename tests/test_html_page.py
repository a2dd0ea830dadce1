"""circuit.html (acd.export.html_page): the embedded data, the commands that write the page, and
the page itself in a real browser (Debian's chromium and chromedriver, driven by Selenium).

The browser tests are marked slow. Without chromium, chromedriver or selenium they are skipped,
and fail with the reason when CI=true (CI installs them: .ci/run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import acd
from acd.circuit import Circuit
from acd.errors import AcdError
from acd.export.html_page import (
    attention_examples,
    check_attention,
    circuit_html,
    curves_document,
    page_data,
    read_curve_json,
    score_effect,
    write_attention_json,
    write_circuit_html,
)
from acd.graph import ComputeGraph, GraphShape

GPT2_SMALL = GraphShape(n_layers=12, n_heads=12, n_kv_heads=12)
SMALL = GraphShape(n_layers=3, n_heads=4, n_kv_heads=4)
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def synthetic_circuit(shape: GraphShape, n_kept: int, *, seed: int = 0, **fields) -> Circuit:
    """A circuit of seeded normal scores keeping ``n_kept`` random valid edges."""
    graph = ComputeGraph(shape)
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=generator)
    valid = graph.valid.flatten().nonzero().flatten()
    chosen = valid[torch.randperm(len(valid), generator=generator)[:n_kept]]
    mask = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.bool)
    mask[chosen] = True
    defaults = dict(params={"metric": "logit_diff"}, metrics={"faithfulness": 0.9})
    return Circuit(
        graph,
        mask.view(graph.n_src, graph.n_dst),
        scores,
        task="ioi",
        model="synthetic",
        method="eap-ig",
        **{**defaults, **fields},
    )


def synthetic_attention(graph: ComputeGraph, lengths=(5, 7), seed: int = 0) -> dict:
    """Causal random patterns of every head on prompts of ``lengths`` tokens (rows sum to 1)."""
    generator = torch.Generator().manual_seed(seed)
    prompts = []
    for n in lengths:
        tokens = ["<bos>"] + [f"w{i}" for i in range(1, n)]
        heads = {}
        for layer in range(graph.n_layers):
            for head in range(graph.n_heads):
                weights = torch.rand(n, n, generator=generator).tril()
                weights = weights / weights.sum(-1, keepdim=True)
                heads[f"a{layer}.h{head}"] = [
                    [round(v, 3) for v in row] for row in weights.tolist()
                ]
        prompts.append({"tokens": tokens, "heads": heads})
    return {"prompts": prompts}


def embedded(page: str) -> dict:
    """The JSON blob of a page."""
    match = re.search(r'<script type="application/json" id="acd-data">(.*?)</script>', page, re.S)
    assert match, "no acd-data script in the page"
    return json.loads(match.group(1))


def expected_ranking(circuit: Circuit, limit: int) -> tuple[list[int], list[int]]:
    """Flat indices and 1-based ranks of what the page should embed, computed with numpy: the
    ``limit`` valid edges of largest |score| (ties by index), then the kept edges below them."""
    scores = circuit.scores.numpy().ravel()
    valid = np.flatnonzero(circuit.graph.valid.numpy().ravel())
    order = valid[np.argsort(-np.abs(scores[valid]), kind="stable")]
    rank = {int(f): r for r, f in enumerate(order, start=1)}
    kept = {int(f) for f in np.flatnonzero(circuit.mask.numpy().ravel())}
    top = [int(f) for f in order[:limit]]
    extra = sorted(kept - set(top), key=rank.__getitem__)
    flat = top + extra
    return flat, [rank[f] for f in flat]


# --- the embedded data -------------------------------------------------------------------------


def test_the_page_embeds_the_top_ranked_edges_and_every_kept_edge():
    circuit = synthetic_circuit(GPT2_SMALL, 300)
    limit = 500
    data = embedded(circuit_html(circuit, max_ranked_edges=limit))
    flat, ranks = expected_ranking(circuit, limit)
    n_dst = circuit.graph.n_dst
    assert [(s, d) for s, d, _ in data["edges"]] == [(f // n_dst, f % n_dst) for f in flat]
    assert data["n_top"] == limit and len(flat) > limit  # some kept edges rank below the top
    assert list(range(1, limit + 1)) + data["extra_ranks"] == ranks
    scores = circuit.scores.numpy().ravel()[flat]
    np.testing.assert_allclose([s for *_, s in data["edges"]], scores, rtol=5e-4)
    kept = {(data["edges"][i][0], data["edges"][i][1]) for i in data["kept"]}
    assert kept == {tuple(e) for e in circuit.mask.nonzero().tolist()}
    assert data["shape"]["n_valid"] == 32491 and len(data["nodes"]) == circuit.graph.n_nodes
    assert data["inclusion"] is None and data["attention"] is None


def test_every_valid_edge_is_embedded_when_the_graph_is_small():
    circuit = synthetic_circuit(SMALL, 10, edge_inclusion=torch.full((16, 40), 0.25))
    data = page_data(circuit)
    assert len(data["edges"]) == circuit.graph.n_edges == data["n_top"]
    assert data["extra_ranks"] == [] and data["inclusion"] == [0.25] * 10


def test_the_page_is_self_contained():
    circuit = synthetic_circuit(GPT2_SMALL, 300)
    page = circuit_html(circuit, attention=synthetic_attention(circuit.graph, (4,)))
    assert set(re.findall(r"https?://[^\s\"'<>)]*", page)) <= {SVG_NAMESPACE}
    assert not re.search(r"\bsrc\s*=", page) and "<link" not in page
    assert "@import" not in page and "url(" not in page


def test_text_in_the_data_cannot_close_the_script_element():
    sneaky = "</script><script>alert(1)</script>"
    circuit = synthetic_circuit(SMALL, 5)
    circuit.task = sneaky
    page = circuit_html(circuit)
    assert sneaky not in page
    assert embedded(page)["title"]["task"] == sneaky


def test_the_sign_that_means_needed_follows_the_metric_as_in_the_diagram():
    from acd.diagram import NEEDED_COLOUR, needed_sign

    def effect(params):
        return score_effect(synthetic_circuit(SMALL, 3, params=params))

    assert effect({"metric": "logit_diff"})["needed_sign"] == -1
    acdc = {"metric": "kl", "evaluation_metric": "logit_diff"}  # a search scores with kl
    assert effect(acdc)["needed_sign"] == 1 == needed_sign(synthetic_circuit(SMALL, 3, params=acdc))
    assert effect({"metric": "l2"})["direction"] == "lower"
    unknown = effect({})
    assert unknown["needed_sign"] == -1 and not unknown["known"]
    assert unknown["colours"]["needed"] == NEEDED_COLOUR


def test_roles_and_node_scores_are_embedded():
    roles = {"a0.h1": {"previous_token": 0.93, "induction": 0.02}}
    circuit = synthetic_circuit(SMALL, 5, node_roles=roles, node_scores={"a0.h1": 0.123456})
    data = page_data(circuit)
    assert data["roles"] == roles and data["node_scores"] == {"a0.h1": 0.1235}
    import acd.roles

    if hasattr(acd.roles, "role_badges"):
        assert data["badges"] == {"a0.h1": acd.roles.role_badges(roles["a0.h1"])}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(reference=torch.zeros(3, 3, dtype=torch.bool)), "shape"),
        (dict(reference=[[True]]), "shape"),
        (dict(curve={"n_edges": [1, 2], "faithfulness": [0.5]}), "same length"),
        (dict(curve={"n_edges": [1.5], "faithfulness": [0.5]}), "whole numbers"),
        (dict(attention={"prompts": [{"tokens": ["a"], "heads": {"a9.h0": [[1.0]]}}]}), "a9.h0"),
        (dict(attention={"prompts": [{"tokens": ["a", "b"], "heads": {"a0.h0": [[1]]}}]}), "row"),
        (dict(attention={"heads": {}}), "prompts"),
        (dict(max_ranked_edges=0), "at least 1"),
    ],
)
def test_bad_input_is_one_acd_error(options, message):
    with pytest.raises(AcdError, match=message):
        circuit_html(synthetic_circuit(SMALL, 5), **options)


def test_the_reference_and_the_curve_are_embedded():
    circuit = synthetic_circuit(SMALL, 8)
    reference = synthetic_circuit(SMALL, 8, seed=1).mask
    curve = {"n_edges": [0, 4, 40], "faithfulness": [0.0, float("nan"), 1.0], "level": "edge"}
    data = page_data(circuit, reference=reference, reference_name="B", curve=curve)
    assert {(s, d) for s, d, _ in data["reference"]["edges"]} == {
        tuple(e) for e in reference.nonzero().tolist()
    }
    assert data["curve"]["faithfulness"] == [0.0, None, 1.0] and data["reference"]["name"] == "B"


def test_a_curves_file_gives_the_circuit_methods_curve_or_the_first(tmp_path):
    point = {"n_edges": [0, 10], "faithfulness": [0.0, float("nan")], "level": "edge"}
    doc = curves_document(
        {"eap": point, "eap-ig": {**point, "faithfulness": [0.0, 0.75]}}, task="ioi", model="toy"
    )
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc, allow_nan=False))
    assert read_curve_json(path, "eap-ig")["faithfulness"] == [0.0, 0.75]
    first = read_curve_json(path, "acdc")
    assert first["method"] == "eap" and first["faithfulness"] == [0.0, None]
    path.write_text("{}")
    with pytest.raises(AcdError, match="no curves"):
        read_curve_json(path)


def test_save_circuit_writes_the_page_and_the_attention_file(tmp_path):
    circuit = synthetic_circuit(SMALL, 6)
    attention = synthetic_attention(circuit.graph, (4,))
    saved = acd.export.save_circuit(circuit, tmp_path, formats=(), attention=attention)
    names = [p.name for p in saved.paths]
    assert names[-2:] == ["circuit.html", "attention.json"]
    assert embedded((tmp_path / "circuit.html").read_text())["attention"] == attention
    assert json.loads((tmp_path / "attention.json").read_text()) == attention


# --- the commands ------------------------------------------------------------------------------


def test_render_html_reads_the_attention_file_beside_the_circuit_and_a_curve(tmp_path, capsys):
    from acd.cli import main

    circuit = synthetic_circuit(SMALL, 6)
    acd.export.save_circuit_json(circuit, tmp_path / "circuit.json")
    attention = synthetic_attention(circuit.graph, (4,))
    write_attention_json(attention, tmp_path / "attention.json")
    curves = curves_document(
        {"eap-ig": {"n_edges": [0, 4], "faithfulness": [0.0, 0.5]}}, task="ioi", model="m"
    )
    (tmp_path / "curve.json").write_text(json.dumps(curves))
    argv = ["render", str(tmp_path / "circuit.json"), "--format", "html"]
    assert main([*argv, "--curve", str(tmp_path / "curve.json")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'circuit.html'}"
    data = embedded((tmp_path / "circuit.html").read_text())
    assert data["attention"]["prompts"] == attention["prompts"]
    assert data["curve"]["n_edges"] == [0, 4] and data["curve"]["method"] == "eap-ig"
    assert not (tmp_path / "circuit.dot").exists()  # html only: no diagram asked for


def test_render_refuses_a_curve_without_html_and_patterns_of_another_model(tmp_path, capsys):
    from acd.cli import main

    circuit = synthetic_circuit(SMALL, 6)
    acd.export.save_circuit_json(circuit, tmp_path / "circuit.json")
    assert main(["render", str(tmp_path / "circuit.json"), "--curve", "c.json"]) == 2
    assert "--format html" in capsys.readouterr().err
    other = synthetic_attention(ComputeGraph(GraphShape(5, 4, 4)), (3,))
    write_attention_json(other, tmp_path / "attention.json")
    assert main(["render", str(tmp_path / "circuit.json"), "--format", "html"]) == 2
    err = capsys.readouterr().err
    assert "attention.json" in err and "another model" in err


@pytest.fixture(scope="module")
def toy():
    return acd.load_model("toy", device="cpu")


def test_discover_writes_the_attention_file_and_a_page_that_shows_it(tmp_path, cached_toy, capsys):
    from acd.cli import main

    out = tmp_path / "out"
    argv = ["discover", "ioi", "--method", "eap", "--prompts", "4", "--edges", "10"]
    assert main([*argv, "--no-trust", "--quiet", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "circuit.html" in stdout and "attention.json" in stdout
    assert f"interactive page: {out / 'circuit.html'}" in stdout
    attention = json.loads((out / "attention.json").read_text())
    assert len(attention["prompts"]) == 3 and len(attention["prompts"][0]["heads"]) == 16
    data = embedded((out / "circuit.html").read_text())
    assert data["attention"]["prompts"] == attention["prompts"]
    assert len(data["kept"]) == acd.load_circuit(out / "circuit.json").n_edges


def test_compare_html_overlays_b_on_a(tmp_path, capsys):
    from acd.cli import main

    a, b = synthetic_circuit(SMALL, 8), synthetic_circuit(SMALL, 8, seed=1)
    acd.export.save_circuit_json(a, tmp_path / "a.json")
    acd.export.save_circuit_json(b, tmp_path / "b.json")
    page = tmp_path / "a_vs_b.html"
    assert (
        main(["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--html", str(page)])
        == 0
    )
    assert f"wrote {page}" in capsys.readouterr().out
    data = embedded(page.read_text())
    assert len(data["kept"]) == 8 and len(data["reference"]["edges"]) == 8
    assert data["reference"]["name"] == "B (b.json)"


# --- the page in a browser ---------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser():
    """Headless chromium through Selenium, shared by the module's browser tests."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if missing:
        reason = (
            "the browser tests need " + ", ".join(missing) + " (apt-get install chromium "
            "chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1800")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> None:
    """Load the page from disk and wait until it has drawn (window.acdPage is set last)."""
    driver.get_log("browser")  # what earlier pages logged
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 20
    while not driver.execute_script("return Boolean(window.acdPage)"):
        errors = driver.execute_script("return window.acdErrors || []")
        assert not errors, errors
        assert time.monotonic() < deadline, "the page never finished drawing"
        time.sleep(0.05)


def assert_no_script_errors(driver) -> None:
    assert driver.execute_script("return window.acdErrors") == []
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def css(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def hover_point(driver, x: float, y: float) -> None:
    """Move the real mouse pointer to viewport coordinates (x, y)."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.perform()


@pytest.mark.slow
def test_the_page_opens_from_disk_and_draws_every_kept_edge(browser, tmp_path):
    circuit = synthetic_circuit(SMALL, 12)
    path = write_circuit_html(circuit, tmp_path / "circuit.html")
    open_page(browser, path)
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 12
    assert len(css(browser, "#acd-edges .acd-edge")) == 12
    assert len(css(browser, ".acd-node")) == circuit.graph.n_nodes
    assert "12 of 262 valid edges kept" in css(browser, "#acd-subtitle")[0].text
    assert "removing it lowers logit_diff" in css(browser, "#acd-legend")[0].text
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_hovering_an_edge_shows_its_score_rank_and_port(browser, tmp_path):
    circuit = synthetic_circuit(SMALL, 12, edge_inclusion=torch.full((16, 40), 0.4))
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html"))
    # the middle of the strongest edge (drawn last, so on top), in viewport coordinates
    x, y = browser.execute_script(
        """const hits = document.querySelectorAll('#acd-hits .acd-hit');
        const path = hits[hits.length - 1];
        path.scrollIntoView({block: 'center'});
        const middle = path.getPointAtLength(path.getTotalLength() / 2);
        const p = middle.matrixTransform(path.getScreenCTM());
        return [p.x, p.y];"""
    )
    hover_point(browser, x, y)
    key = browser.execute_script(
        "return document.elementFromPoint(arguments[0], arguments[1]).dataset.key", x, y
    )
    tip = css(browser, "#acd-tooltip")[0]
    assert tip.is_displayed()
    src, dst = map(int, key.split(","))
    score = float(circuit.scores[src, dst])
    text = tip.text
    assert f"{circuit.graph.sources[src].name} → {circuit.graph.destinations[dst].name}" in text
    shown = float(re.search(r"score ([+-][0-9.e-]+)", text).group(1))
    assert shown == pytest.approx(score, rel=1e-3)
    assert re.search(r"rank \d+ of 262 valid edges", text) and "port: " in text
    assert "kept in 40 % of the prompt resamples" in text
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_the_slider_sets_how_many_edges_are_drawn(browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    circuit = synthetic_circuit(SMALL, 12)
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html"))
    slider = css(browser, "#acd-slider")[0]
    assert slider.get_attribute("max") == "262" and slider.get_attribute("value") == "12"
    slider.send_keys(Keys.HOME)  # real key presses fire the slider's input events
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 1
    slider.send_keys(Keys.ARROW_RIGHT * 4)
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 5
    assert "the top 5 edges by |score|" in css(browser, "#acd-size")[0].text
    assert browser.execute_script("return acdPage.setSize(77)") == 77
    assert len(css(browser, "#acd-edges .acd-edge")) == 77
    css(browser, "#acd-reset")[0].click()
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 12
    assert "the saved circuit: 12 edges" in css(browser, "#acd-size")[0].text
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_the_slider_reads_the_faithfulness_measured_at_the_nearest_size(browser, tmp_path):
    circuit = synthetic_circuit(SMALL, 12)
    curve = {"n_edges": [0, 10, 60, 262], "faithfulness": [0.0, 0.4, 0.8, 1.0]}
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html", curve=curve))
    browser.execute_script("acdPage.setSize(50)")
    assert "faithfulness 0.800, measured at 60 edges" in css(browser, "#acd-curve")[0].text
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_clicking_a_head_draws_its_attention_pattern(browser, tmp_path):
    circuit = synthetic_circuit(SMALL, 12)
    attention = synthetic_attention(circuit.graph, (5, 7))
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html", attention=attention))
    head = css(browser, f'.acd-node[data-node="{circuit.graph.src_index["a1.h2"]}"]')[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", head)
    head.click()
    assert "Attention pattern of a1.h2" in css(browser, "#acd-pattern h2")[0].text
    assert len(css(browser, "#acd-pattern .acd-cell")) == 25
    tokens = attention["prompts"][0]["tokens"]
    assert [t.text for t in css(browser, ".acd-token-q")] == tokens
    assert [t.get_attribute("textContent") for t in css(browser, ".acd-token-k")] == tokens
    from selenium.webdriver.support.ui import Select

    Select(css(browser, "#acd-prompt")[0]).select_by_index(1)  # the second prompt: 7 tokens
    cells = css(browser, "#acd-pattern .acd-cell")
    assert len(cells) == 49
    cell = next(
        c for c in cells if (c.get_attribute("data-q"), c.get_attribute("data-k")) == ("6", "2")
    )
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", cell)
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element(cell).perform()
    value = attention["prompts"][1]["heads"]["a1.h2"][6][2]
    assert f"a1.h2: {value:.3f}" in css(browser, "#acd-tooltip")[0].text
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_without_patterns_a_click_says_how_to_get_them(browser, tmp_path):
    circuit = synthetic_circuit(SMALL, 12)
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html"))
    browser.execute_script("acdPage.selectHead('a0.h0')")
    text = css(browser, "#acd-pattern")[0].text
    assert "No attention patterns were saved" in text and "attention_examples" in text
    assert not css(browser, ".acd-cell")
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_the_reference_overlay_shows_three_kinds_of_edges_with_their_counts(browser, tmp_path):
    circuit = synthetic_circuit(SMALL, 20)
    reference = synthetic_circuit(SMALL, 20, seed=1).mask.clone()
    for i, j in circuit.mask.nonzero().tolist()[:5]:  # some edges in both
        reference[i, j] = True
    both = int((circuit.mask & reference).sum())
    only_this = int((circuit.mask & ~reference).sum())
    only_ref = int((reference & ~circuit.mask).sum())
    assert both and only_this and only_ref
    path = write_circuit_html(
        circuit, tmp_path / "circuit.html", reference=reference, reference_name="the reference"
    )
    open_page(browser, path)
    assert browser.execute_script("return acdPage.categoryCounts()") == {
        "both": both,
        "onlyThis": only_this,
        "onlyRef": only_ref,
    }
    assert len(css(browser, ".acd-edge.acd-both")) == both
    assert len(css(browser, ".acd-edge.acd-onlyThis")) == only_this
    refs = css(browser, ".acd-edge.acd-onlyRef")
    assert len(refs) == only_ref and refs[0].get_attribute("stroke-dasharray")
    assert f"in both: {both} edges" in css(browser, "#acd-count-both")[0].text
    assert f"only in this circuit: {only_this} edges" in css(browser, "#acd-count-this")[0].text
    assert f"only in the reference: {only_ref} edges" in css(browser, "#acd-count-ref")[0].text
    css(browser, "#acd-overlay")[0].click()  # off: the circuit alone again
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 20
    assert_no_script_errors(browser)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape",
    [
        GraphShape(2, 4, 2),  # grouped-query attention: k/v ports on the group nodes
        GraphShape(2, 4, 4, parallel_attn_mlp=True),
        GraphShape(2, 4, 4, has_mlp=False),
    ],
    ids=["gqa", "parallel", "attn-only"],
)
def test_other_architectures_and_node_level_circuits_draw(browser, tmp_path, shape):
    graph = ComputeGraph(shape)
    scores = {name: 0.5 for name in graph.nodes[: graph.n_src]}
    circuit = synthetic_circuit(shape, 9, level="node", node_scores=scores)
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html"))
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 9
    assert "+0.5" in css(browser, "#acd-nodes")[0].get_attribute("textContent")
    assert "heads and MLPs kept" in css(browser, "#acd-subtitle")[0].text
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_an_empty_circuit_and_scores_of_nan_or_zero_draw(browser, tmp_path):
    circuit = synthetic_circuit(SMALL, 0)
    circuit.scores[circuit.graph.valid] = 0.0
    circuit.scores[0, circuit.graph.dst_logits()] = float("nan")
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html"))
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 0
    assert "No edges drawn." in css(browser, "#acd-top")[0].text
    assert browser.execute_script("return acdPage.setSize(3)") == 3
    assert "all drawn edges score 0" in css(browser, "#acd-legend")[0].text
    assert "No drawn edge has a score other than 0." in css(browser, "#acd-top")[0].text
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_a_gpt2_small_page_with_300_edges_opens_quickly(browser, tmp_path):
    circuit = synthetic_circuit(GPT2_SMALL, 300)
    path = write_circuit_html(circuit, tmp_path / "circuit.html")
    open_page(browser, path)
    rendered_ms = browser.execute_script("return acdPage.renderedMs")
    size_kb = path.stat().st_size / 1e3
    print(f"\n300-edge GPT-2-small page: {size_kb:.0f} kB, drawn {rendered_ms:.0f} ms")
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 300
    assert rendered_ms < 10_000  # generous: a shared CI machine; about 0.1 s here
    assert browser.execute_script("return acdPage.setSize(2000)") == 2000
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == 2000
    assert_no_script_errors(browser)


@pytest.mark.slow
def test_the_embedded_models_ioi_circuit_shows_real_patterns(browser, tmp_path, toy):
    model = toy
    run = acd.RunConfig(progress=False, trust=False)
    circuit = acd.discover("ioi", model, prompts=10, run=run)
    batch = acd.load_task("ioi").make_batch(model.tokenizer, 3, seed=0)
    attention = attention_examples(model, batch)
    assert len(attention["prompts"]) == 3
    check_attention(attention, circuit.graph)
    first = attention["prompts"][0]
    length = int(batch.lengths[0])
    assert len(first["tokens"]) == length and len(first["heads"]) == 16
    rows = np.array(first["heads"]["a0.h0"])
    np.testing.assert_allclose(rows.sum(1), 1, atol=5e-3)  # softmax rows, rounded
    assert np.all(np.triu(rows, 1) == 0)  # causal
    open_page(browser, write_circuit_html(circuit, tmp_path / "circuit.html", attention=attention))
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == circuit.n_edges
    browser.execute_script("acdPage.selectHead('a1.h0')")
    assert len(css(browser, "#acd-pattern .acd-cell")) == length * length
    assert [t.text for t in css(browser, ".acd-token-q")] == first["tokens"]
    assert_no_script_errors(browser)


GALLERY = Path(__file__).resolve().parents[1] / "graphs" / "toy"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ioi", "greater-than", "induction"])
def test_the_gallery_pages_open_with_their_circuit_badges_slider_and_patterns(browser, task):
    """The committed pages of graphs/ (graphs/regenerate.sh), as a person opens them: every kept
    edge of the folder's circuit.json drawn, role badges on the heads that have one, the slider
    growing the circuit, a click on a kept head drawing its pattern, no script error."""
    from acd.export import load_circuit
    from acd.roles import role_badges

    folder = GALLERY / task / "eap-ig"
    circuit = load_circuit(folder / "circuit.json")
    open_page(browser, folder / "circuit.html")
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == circuit.n_edges
    page_text = browser.find_element("tag name", "body").text
    for name, scores in circuit.node_roles.items():
        if name in circuit.kept_sources:
            for badge in role_badges(scores):
                assert badge in page_text, (name, badge)
    browser.execute_script(f"acdPage.setSize({circuit.n_edges + 10})")
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == circuit.n_edges + 10
    assert "measured at" in css(browser, "#acd-controls")[0].text  # the gallery's curve.json
    head = next(name for name in circuit.kept_sources if name.startswith("a"))
    browser.execute_script(f"acdPage.selectHead('{head}')")
    assert len(css(browser, "#acd-pattern .acd-cell")) > 0
    assert_no_script_errors(browser)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["ioi", "greater-than", "induction"])
def test_the_gallery_positional_pages_draw_every_positional_edge(browser, task):
    """The committed positional pages (graphs/<task>/eap-ig-positions): every kept positional
    edge of the folder's circuit.json drawn, one column per span, no script error."""
    from acd.export import load_circuit

    folder = GALLERY / task / "eap-ig-positions"
    circuit = load_circuit(folder / "circuit.json")
    assert circuit.positional is not None
    open_page(browser, folder / "circuit.html")
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == circuit.positional.n_edges
    page_text = browser.find_element("tag name", "body").text
    for span in circuit.positional.spans:
        assert span in page_text, span
    # The slider grows the circuit by positional edges, and the folder's positional curve
    # (curve.json, acd curve --positions) says what was measured at the nearest size.
    browser.execute_script(f"acdPage.setSize({circuit.positional.n_edges + 5})")
    assert browser.execute_script("return acdPage.drawnEdgeCount()") == (
        circuit.positional.n_edges + 5
    )
    controls = css(browser, "#acd-controls")[0].text
    assert "measured at" in controls and "positional edges (acd curve, eap-ig" in controls
    assert_no_script_errors(browser)
