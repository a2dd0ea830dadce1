"""circuit.html in headless chromium: the screenshots in docs/, and how big and how fast the page
of a GPT-2-small-sized circuit is.

    python bench/html_page.py              # docs/circuit_page.png, docs/circuit_page_pattern.png
    python bench/html_page.py --runs 9     # more page loads for the timing

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and the
selenium package (the dev extra). Two parts:

- the embedded model's IOI circuit (``acd.discover("ioi")``, what ``acd discover ioi`` finds)
  with attention patterns on 3 prompts: a screenshot of the whole page, then one after clicking
  a head of the circuit (one with a role badge where there is one);
- a synthetic circuit on GPT-2 small's graph (12 layers x 12 heads, 32,491 valid edges) with
  seeded random scores and 300 kept edges: the file's size and, over ``--runs`` loads, the
  median time from navigation start to the page drawn (``acdPage.renderedMs``, taken at the end
  of the page's drawing) and to the load event.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import acd
from acd.export.html_page import attention_examples, write_circuit_html
from acd.graph import ComputeGraph, GraphShape

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WIDTH = 1400


def chrome(height: int = 1000):
    """Headless chromium driven by Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={WIDTH},{height}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def open_page(driver, path: Path) -> None:
    """Load a page from disk and wait until it has drawn."""
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + 30
    while not driver.execute_script("return Boolean(window.acdPage)"):
        if driver.execute_script("return (window.acdErrors || []).length"):
            raise RuntimeError(driver.execute_script("return window.acdErrors"))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} never finished drawing")
        time.sleep(0.05)


def whole_page_screenshot(driver, out: Path) -> None:
    """The whole page, however tall, as a PNG."""
    driver.execute_script("window.scrollTo(0, 0)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    # the window's size includes what the browser draws around the page
    frame = driver.execute_script("return window.outerHeight - window.innerHeight")
    driver.set_window_size(WIDTH, height + frame)
    driver.save_screenshot(str(out))


def head_to_click(circuit) -> str:
    """A head of the circuit, one with a role badge where there is one."""
    import acd.roles

    heads = [name for name in circuit.kept_sources if circuit.graph.node(name).kind == "head"]
    if not heads:
        return "a0.h0"
    badges = getattr(acd.roles, "role_badges", None)
    badged = [
        h for h in heads if badges and h in circuit.node_roles and badges(circuit.node_roles[h])
    ]
    return (badged or heads)[0]


def screenshots(docs: Path, work: Path) -> None:
    """The embedded model's IOI circuit page, whole and after clicking a head."""
    model = acd.load_model("toy", device="cpu")
    circuit = acd.discover("ioi", model, run=acd.RunConfig(progress=False))
    batch = acd.load_task("ioi").make_batch(model.tokenizer, 3, seed=0)
    page = write_circuit_html(
        circuit, work / "toy_ioi.html", attention=attention_examples(model, batch)
    )
    driver = chrome()
    try:
        open_page(driver, page)
        whole_page_screenshot(driver, docs / "circuit_page.png")
        head = head_to_click(circuit)
        driver.set_window_size(WIDTH, 1000)
        driver.execute_script("acdPage.selectHead(arguments[0])", head)
        whole_page_screenshot(driver, docs / "circuit_page_pattern.png")
    finally:
        driver.quit()
    print(f"{circuit}: {page.stat().st_size / 1e3:.0f} kB; clicked {head}")
    print(f"wrote {docs / 'circuit_page.png'}, {docs / 'circuit_page_pattern.png'}")


def gpt2_small_page(work: Path, n_kept: int = 300) -> Path:
    """The page of a GPT-2-small-sized circuit of seeded random scores and ``n_kept`` edges."""
    graph = ComputeGraph(GraphShape(n_layers=12, n_heads=12, n_kv_heads=12))
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=generator)
    valid = graph.valid.flatten().nonzero().flatten()
    mask = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.bool)
    mask[valid[torch.randperm(len(valid), generator=generator)[:n_kept]]] = True
    circuit = acd.Circuit(
        graph,
        mask.view(graph.n_src, graph.n_dst),
        scores,
        task="ioi",
        model="gpt2-small-shaped",
        method="eap-ig",
        params={"metric": "logit_diff"},
        metrics={"faithfulness": 0.9},
    )
    start = time.perf_counter()
    path = write_circuit_html(circuit, work / "gpt2_small_300.html")
    print(f"GPT-2 small, {n_kept} kept edges: written in {time.perf_counter() - start:.2f} s")
    return path


def open_times(path: Path, runs: int) -> None:
    """File size and the median times to draw and to the load event over ``runs`` loads."""
    driver = chrome()
    drawn, loaded = [], []
    try:
        for _ in range(runs):
            open_page(driver, path)
            drawn.append(driver.execute_script("return acdPage.renderedMs"))
            loaded.append(
                driver.execute_script(
                    "const t = performance.getEntriesByType('navigation')[0];"
                    "return t.loadEventEnd || performance.now();"
                )
            )
            assert driver.execute_script("return acdPage.drawnEdgeCount()") == 300
    finally:
        driver.quit()
    print(
        f"{path.name}: {path.stat().st_size / 1e3:.0f} kB; navigation start -> drawn "
        f"{statistics.median(drawn):.0f} ms, -> load event {statistics.median(loaded):.0f} ms "
        f"(medians of {runs} loads, headless chromium)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", default="docs", help="where the screenshots go (docs)")
    parser.add_argument("--runs", type=int, default=5, help="page loads timed (5)")
    parser.add_argument("--no-screenshots", action="store_true", help="only the timing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.no_screenshots:
            screenshots(Path(args.docs), work)
        open_times(gpt2_small_page(work), args.runs)


if __name__ == "__main__":
    main()
