"""Speed and memory of the scoring engine, against plain Hugging Face passes and TransformerLens.

    python bench/bench_engine.py [--runs 5] [--exact-edges 300] [--threads N] [--skip-tl]

Two models, one process: the embedded ``toy`` and a GPT-2-small-shaped model (random weights
from ``transformers.GPT2Config()``, vocabulary 50257: the toy's words padded with dummy tokens),
saved with its tokenizer to a temporary directory so that ``acd.load_model`` loads it through the
real path. Prompts: 8 IOI pairs (16 tokens). Every time is the median of ``--runs`` runs after
one warm-up run. Figures:

    F        plain HF forward, ``model.bridge.original_model(tokens)``, no gradients
    B        HF backward from the task metric to the input embeddings, parameters frozen
    EAP      ``attribute(method="eap")``: corrupted forward + clean forward/backward + einsum;
             compared with 3F + B (the budget its target is set against) and with 2F + B
             (the passes it needs)
    eval     ``evaluate_circuit`` of a 200-edge circuit (4 forwards: corrupted, clean, empty,
             circuit) and the bare circuit run (corrupted forward + one patched forward), / 2F
    discover ``discover(method="eap", select=TopN(200))`` end to end on the same prompts: the
             sanity gate's reference runs (clean and corrupted forwards) are kept by the prompt
             runner, so scoring reuses the corrupted sources and the evaluation costs one
             patched forward; compared with EAP + 2F (target: discover - EAP <= 1.3 x 2F), and
             the evaluation inside it (``evaluate_with`` on the discover runner) / 2F (target
             <= 1.3). ``weights_sha256`` (hashing the state dict, which a circuit records) is
             timed on its own and reported beside it.
    exact    ``attribute(method="exact")`` time per edge / F; on GPT-2 a random subset of edges
             is timed and the total extrapolated to every edge
    memory   peak resident memory above the starting point (Linux VmHWM, reset through
             /proc/self/clear_refs) of EAP and of a plain HF forward + backward
    TL       TransformerLens 4's ``attribution_patch`` at edge granularity on the same prompts,
             one call per prompt (it scores pairs one by one), roles swapped so that its
             "denoising" convention computes acd's EAP: its clean = our corrupted, its corrupt =
             our clean (gradient at our clean run, delta = corrupted - clean). Its per-position
             edge scores are summed over positions and mapped to acd's [n_src, n_dst].
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import acd
from acd.attribution import attribute, score_with
from acd.evaluate import evaluate_circuit, evaluate_with, separation_of
from acd.graph import ComputeGraph
from acd.metrics import get_metric
from acd.models import weights_sha256
from acd.models.load import embedded_models_dir
from acd.patching import patch_values, run_patched
from acd.runner import PromptRunner
from acd.search import select_topn

N_PROMPTS = 8
GPT2_VOCAB = 50257
CIRCUIT_EDGES = 200


# --------------------------------------------------------------------------------------------
# Models


def build_gpt2_dir(directory: Path, n_layer: int = 12) -> Path:
    """A GPT-2-small-shaped model (``n_layer`` layers) with random weights and a word-level
    tokenizer (the toy's words, padded to 50257 entries with dummy tokens), as an ordinary HF
    model directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    toy = embedded_models_dir() / "toy"
    tokenizer = json.loads((toy / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    for i in range(len(vocab), GPT2_VOCAB):
        vocab[f"<dummy{i}>"] = i
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "tokenizer_config.json").write_text((toy / "tokenizer_config.json").read_text())
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=GPT2_VOCAB, bos_token_id=0, eos_token_id=0, n_layer=n_layer)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------------------------
# Measuring


def median_time(fn, runs: int) -> float:
    """Median wall time of ``fn()`` in seconds, over ``runs`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_bytes(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+) kB", text).group(1)) * 1024


def release_freed_memory() -> None:
    """Make freed tensors leave the resident set (glibc), so that RSS follows live tensors.

    A fixed mmap threshold serves every allocation of 64 KiB or more by its own mapping, given
    back to the system on free (glibc otherwise raises the threshold after the first frees and
    keeps later blocks in its heap); malloc_trim releases what the heap still holds.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 64 * 1024)
    libc.malloc_trim(0)


def peak_memory(fn) -> int | None:
    """Peak resident memory above the starting point while ``fn()`` runs, in bytes (Linux)."""
    release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    start = _status_bytes("VmRSS")
    fn()
    return _status_bytes("VmHWM") - start


def hf_forward_backward(model, batch) -> float:
    """Time of the backward pass alone (the forward runs first, untimed)."""
    hf = model.bridge.original_model
    embeds = hf.get_input_embeddings()(batch.clean).detach().requires_grad_()
    with torch.enable_grad():
        logits = hf(inputs_embeds=embeds).logits
        value = get_metric(batch.metric)(logits, batch).sum()
        start = time.perf_counter()
        torch.autograd.grad(value, embeds)
    return time.perf_counter() - start


def median_backward(model, batch, runs: int) -> float:
    hf_forward_backward(model, batch)
    return statistics.median(hf_forward_backward(model, batch) for _ in range(runs))


# --------------------------------------------------------------------------------------------
# TransformerLens


def tl_attribution(model, graph, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """TransformerLens's edge attribution mapped to acd's [n_src, n_dst] (mean over prompts),
    and the [n_src, n_dst] bool mask of the edges it scored."""
    from transformer_lens.tools.analysis.attribution_patching import (
        EdgeAttributionConfig,
        attribution_patch,
    )

    metric = get_metric(batch.metric)
    scores = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    scored = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.bool)
    # acd freezes the parameters, so nothing upstream of the token embedding needs a gradient;
    # TransformerLens differentiates with respect to cached activations, which then need one.
    leaf = ("hook_embed", lambda x, hook: x.detach().requires_grad_())
    for i in range(len(batch)):
        one = batch.select([i])
        with model.bridge.hooks(fwd_hooks=[leaf]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = attribution_patch(
                model.bridge,
                one.corrupted,  # its "clean": the run whose activations are patched in
                one.clean,  # its "corrupt": where it takes the gradient
                lambda logits, one=one: metric(logits, one).sum(),
                EdgeAttributionConfig(granularity="edge"),
            )
        for (writer, reader), value in result.edge_scores.items():
            edge = _tl_source(graph, writer), _tl_destination(graph, reader)
            scores[edge] += value
            scored[edge] = True
    return scores / len(batch), scored


def _tl_source(graph, node) -> int:
    if node.kind == "embed":
        return graph.src_input()
    if node.kind == "attn_head_out":
        return graph.src_head(node.layer, node.head)
    return graph.src_mlp(node.layer)


def _tl_destination(graph, node) -> int:
    if node.kind == "q_input":
        return graph.dst_q(node.layer, node.head)
    if node.kind == "k_input":
        return graph.dst_k(node.layer, node.head)
    if node.kind == "v_input":
        return graph.dst_v(node.layer, node.head)
    if node.kind == "mlp_in":
        return graph.dst_mlp(node.layer)
    return graph.dst_logits()


# --------------------------------------------------------------------------------------------
# One model


def bench_model(name: str, model, args) -> dict:
    graph = ComputeGraph.from_model(model)
    batch = acd.load_task("ioi").make_batch(model.tokenizer, N_PROMPTS, seed=0)
    hf = model.bridge.original_model
    runs = args.runs
    out = {"model": name, "edges": graph.n_edges, "tokens": tuple(batch.clean.shape)}

    with torch.no_grad():
        out["F"] = median_time(lambda: hf(batch.clean), runs)
    out["B"] = median_backward(model, batch, runs)

    eap = attribute(model, graph, batch, "eap", progress=False)
    out["eap"] = median_time(lambda: attribute(model, graph, batch, "eap", progress=False), runs)
    out["eap_ig"] = median_time(
        lambda: attribute(model, graph, batch, "eap-ig", ig_steps=5, progress=False), runs
    )

    circuit = select_topn(eap, graph.valid, CIRCUIT_EDGES)
    out["eval"] = median_time(lambda: evaluate_circuit(model, graph, batch, circuit), runs)

    def bare_circuit_run():
        patch = patch_values(model, graph, batch, "corrupted")
        run_patched(model, graph, batch.clean, ~circuit & graph.valid, patch)

    out["eval_bare"] = median_time(bare_circuit_run, runs)

    quiet = acd.RunConfig(progress=False)
    top = acd.TopN(CIRCUIT_EDGES)
    task = acd.load_task("ioi")
    out["discover"] = median_time(
        lambda: acd.discover(task, model, method="eap", select=top, prompts=N_PROMPTS, run=quiet),
        runs,
    )
    out["hash"] = median_time(lambda: weights_sha256(model), runs)
    runner = PromptRunner(model, graph, batch.to(model.device), method="eap")
    separation_of(runner)  # the gate: the reference runs discover keeps
    score_with(runner, "eap", progress=False)
    out["eval_in_discover"] = median_time(lambda: evaluate_with(runner, circuit[None]), runs)

    keep = graph.valid
    if args.exact_edges and args.exact_edges < graph.n_edges:
        chosen = graph.valid.flatten().nonzero().squeeze(1)
        chosen = chosen[torch.randperm(len(chosen), generator=torch.Generator().manual_seed(0))]
        keep = torch.zeros(graph.valid.numel(), dtype=torch.bool)
        keep[chosen[: args.exact_edges]] = True
        keep = keep.view_as(graph.valid)
    out["exact_edges_timed"] = int(keep.sum())
    exact_time = median_time(
        lambda: attribute(model, graph, batch, "exact", edge_mask=keep, progress=False), runs
    )
    out["exact_per_edge"] = exact_time / out["exact_edges_timed"]

    def plain_forward_backward():
        with torch.no_grad():
            hf(batch.clean)
        hf_forward_backward(model, batch)

    out["mem_eap"] = peak_memory(lambda: attribute(model, graph, batch, "eap", progress=False))
    out["mem_fb"] = peak_memory(plain_forward_backward)

    if not args.skip_tl:
        tl, scored = tl_attribution(model, graph, batch)
        out["tl"] = median_time(lambda: tl_attribution(model, graph, batch), args.tl_runs)
        out["tl_max_diff"] = float((tl - eap.double()).abs().max())
        out["tl_max_score"] = float(eap.abs().max())
        out["tl_same_edges"] = bool((scored == graph.valid).all())
    return out


# --------------------------------------------------------------------------------------------
# Report


def report(results: list[dict], args) -> str:
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s), "
        f"median of {args.runs} runs (TransformerLens: {args.tl_runs}), "
        f"{N_PROMPTS} IOI prompts",
        "",
    ]
    header = f"| {'figure':<44} | " + " | ".join(f"{r['model']:>14}" for r in results) + " |"
    lines += [header, "|" + "-" * 46 + "|" + "|".join("-" * 16 for _ in results) + "|"]

    def row(label, fn):
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label:<44} | " + " | ".join(f"{c:>14}" for c in cells) + " |")

    ms = "{:.1f} ms".format
    row("tokens [batch, pos]", lambda r: str(r["tokens"]))
    row("valid edges", lambda r: str(r["edges"]))
    row("F  plain HF forward", lambda r: ms(1e3 * r["F"]))
    row("B  HF backward to the embeddings", lambda r: ms(1e3 * r["B"]))
    row("EAP", lambda r: ms(1e3 * r["eap"]))
    row(
        "EAP / (3F + B)            target <= 1.3",
        lambda r: f"{r['eap'] / (3 * r['F'] + r['B']):.2f}",
    )
    row("EAP / (2F + B)", lambda r: f"{r['eap'] / (2 * r['F'] + r['B']):.2f}")
    row("EAP-IG, 5 steps", lambda r: ms(1e3 * r["eap_ig"]))
    row(
        "EAP-IG / (2F + 5(F + B))",
        lambda r: f"{r['eap_ig'] / (2 * r['F'] + 5 * (r['F'] + r['B'])):.2f}",
    )
    row("evaluate_circuit (200 edges)", lambda r: ms(1e3 * r["eval"]))
    row("evaluate_circuit / 2F     target <= 1.2", lambda r: f"{r['eval'] / (2 * r['F']):.2f}")
    row("bare circuit run (2 fwd) / 2F", lambda r: f"{r['eval_bare'] / (2 * r['F']):.2f}")
    row(
        "evaluation inside discover / 2F  target <= 1.3",
        lambda r: f"{r['eval_in_discover'] / (2 * r['F']):.2f}",
    )
    row("discover (EAP, top 200)", lambda r: ms(1e3 * r["discover"]))
    row("  of which weights_sha256", lambda r: ms(1e3 * r["hash"]))
    row(
        "(discover - EAP) / 2F    target <= 1.3",
        lambda r: f"{(r['discover'] - r['eap']) / (2 * r['F']):.2f}",
    )
    row(
        "(discover - hash - EAP) / 2F",
        lambda r: f"{(r['discover'] - r['hash'] - r['eap']) / (2 * r['F']):.2f}",
    )
    row("exact: edges timed", lambda r: str(r["exact_edges_timed"]))
    row("exact: time per edge", lambda r: ms(1e3 * r["exact_per_edge"]))
    row("exact per edge / F        target <= 0.6", lambda r: f"{r['exact_per_edge'] / r['F']:.3f}")
    row("exact: all edges (extrapolated)", lambda r: f"{r['exact_per_edge'] * r['edges']:.1f} s")
    row("peak memory, EAP", lambda r: f"{r['mem_eap'] / 2**20:.0f} MiB")
    row("peak memory, HF forward + backward", lambda r: f"{r['mem_fb'] / 2**20:.0f} MiB")
    row("peak memory ratio EAP / (F + B)", lambda r: f"{r['mem_eap'] / r['mem_fb']:.2f}")
    row("TransformerLens attribution_patch (edges)", lambda r: ms(1e3 * r["tl"]))
    row("TransformerLens / acd EAP", lambda r: f"{r['tl'] / r['eap']:.1f}x")
    row("max |TL - acd| / max |score|", lambda r: f"{r['tl_max_diff'] / r['tl_max_score']:.1e}")
    row("max |TL - acd|", lambda r: f"{r['tl_max_diff']:.1e}")
    row("TL scores exactly acd's valid edges", lambda r: str(r["tl_same_edges"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tl-runs", type=int, default=5)
    parser.add_argument("--exact-edges", type=int, default=300, help="edges timed on GPT-2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-tl", action="store_true")
    parser.add_argument("--only", choices=["toy", "gpt2-small"], default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = []
    if args.only in (None, "toy"):
        toy = acd.load_model("toy", device="cpu")
        args_toy = argparse.Namespace(**{**vars(args), "exact_edges": None})  # all 479 edges
        results.append(bench_model("toy", toy, args_toy))
        del toy
    if args.only in (None, "gpt2-small"):
        with tempfile.TemporaryDirectory() as tmp:
            model = acd.load_model(build_gpt2_dir(Path(tmp)), device="cpu")
        results.append(bench_model("gpt2-small", model, args))
    print(report(results, args))


if __name__ == "__main__":
    main()
