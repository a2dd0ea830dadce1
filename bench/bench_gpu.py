"""One GPU session: GPT-2-small-shaped scoring and ACDC in fp32 and bf16, and EAP on a
Llama-3-8B-shaped model built on the GPU in bf16.

    python bench/bench_gpu.py [--out FILE] [--runs 3] [--only gpt2|llama] [--tau 0.001]
                              [--rows 2048] [--max-exact-s 60] [--max-acdc-s 150] [--budget-s 500]
    python bench/bench_gpu.py --small     # the same code with tiny shapes (CPU dry run)

Every time is the median of ``--runs`` runs after one warm-up (CUDA synchronised), except exact
scoring and ACDC, which run once each (warmed up by the cheaper figures before them). Each part
runs in its own try/except: an error (out of memory, ...) is printed and the script goes on.
The Llama part (b) runs first: it is short, and the long GPT-2 figures (exact, ACDC) must not
crowd it out. ``--budget-s`` bounds the whole run: exact scoring and ACDC get at most what is
left of it (and their own limits), so that the script ends within a device session's command
limit however slow a figure turns out.

a. GPT-2 small (``GPT2Config()``, random weights, vocabulary 50257: bench_engine.build_gpt2_dir),
   100 IOI prompts of 16 tokens, in fp32 and bf16: a bare Hugging Face forward F, EAP, EAP-IG
   (5 steps), exact scoring of all 32,491 edges, and ACDC over all edges (KL, ``--tau``,
   ``--rows`` rows per forward); seconds and the ratio to F. Exact scoring is first timed on
   ``--exact-probe`` edges; when that extrapolates past ``--max-exact-s`` seconds, the full run
   is skipped and the extrapolation reported. ACDC (run before exact: its target, <= 2 min on
   one H100, matters more) stops at ``--max-acdc-s`` seconds (reported as "> limit" with the
   edges visited), so that one slow figure cannot use up the session.
b. Llama-3-8B shape (hidden 4096, 32 layers, 32 heads, 8 key-value heads, intermediate 14336,
   vocabulary 128256, rope), random weights built directly on the GPU in bf16 and wrapped with
   ``load_model(tokenizer_dir, hf_model=model)``: EAP on 32 prompts x 32 tokens (seconds per
   batch, peak ``torch.cuda.max_memory_allocated``), a bare forward, and forward + backward to
   the embeddings (parameters frozen) for reference.
c. A Markdown table of every figure, printed and written to ``--out``.

``--small``: GPT-2 with 2 layers, 8 prompts; Llama with 2 layers, hidden 256, 8 heads and 2
key-value heads (the 8B's 4 query heads per key-value head), 4 prompts x 32 tokens.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_engine, run from anywhere

from bench_engine import build_gpt2_dir  # noqa: E402

import acd  # noqa: E402
from acd.acdc import acdc  # noqa: E402
from acd.attribution import attribute, auto_batch_size  # noqa: E402
from acd.graph import ComputeGraph  # noqa: E402
from acd.metrics import get_metric  # noqa: E402
from acd.models.load import embedded_models_dir  # noqa: E402
from acd.tasks import PromptBatch  # noqa: E402

LLAMA_VOCAB = 128256


# --------------------------------------------------------------------------------------------
# Figures


@dataclass
class Report:
    """Every figure as a table row (part, figure, value), printed as soon as it is measured."""

    device: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, part: str, figure: str, value: str) -> None:
        self.rows.append((part, figure, value))
        print(f"[{self.device}] {part} | {figure} | {value}", flush=True)

    def table(self) -> str:
        widths = [max(len(r[i]) for r in [("part", "figure", "value"), *self.rows]) for i in (0, 1)]
        lines = [
            f"| {'part':<{widths[0]}} | {'figure':<{widths[1]}} | value |",
            f"|{'-' * (widths[0] + 2)}|{'-' * (widths[1] + 2)}|-------|",
        ]
        lines += [f"| {p:<{widths[0]}} | {f:<{widths[1]}} | {v} |" for p, f, v in self.rows]
        return "\n".join(lines)


def guarded(report: Report, part: str, fn) -> None:
    """Run ``fn()``, one part; on any error print it, record it, free the GPU memory, go on."""
    try:
        fn()
    except Exception as err:  # any failure (OOM, a bug) must not stop the other parts
        traceback.print_exc()
        report.add(part, "ERROR", f"{type(err).__name__}: {str(err).splitlines()[0][:120]}")
    finally:
        gc.collect()  # the failed part's model may still be referenced by a cycle
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def left_s(args) -> float:
    """Seconds left of --budget-s."""
    return args.deadline - time.perf_counter()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.machine()}, {torch.get_num_threads()} thread(s)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, runs: int, device: torch.device) -> float:
    """Median wall seconds of ``fn()`` over ``runs`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        times.append(once(fn, device)[0])
    return statistics.median(times)


def once(fn, device: torch.device):
    """(wall seconds of one ``fn()``, its result), CUDA synchronised on both sides."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def peak_bytes(fn, device: torch.device) -> int | None:
    """Peak CUDA memory allocated while ``fn()`` runs (weights included); None on the CPU."""
    if device.type != "cuda":
        fn()
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def gib(n: int | None) -> str:
    return "n/a (CPU)" if n is None else f"{n / 2**30:.2f} GiB"


def seconds(s: float, f: float | None = None) -> str:
    """Seconds, and the ratio to a forward when ``f`` is given."""
    text = f"{s:.3f} s" if s < 100 else f"{s:.0f} s"
    return text if f is None else f"{text} ({s / f:.1f} F)"


# --------------------------------------------------------------------------------------------
# Plain Hugging Face passes


def hf_forward(model, tokens: torch.Tensor) -> None:
    with torch.no_grad():
        model.bridge.original_model(tokens)


def hf_forward_backward(model, batch: PromptBatch) -> None:
    """Forward with the embeddings as leaves, backward of the task metric to them (parameters
    frozen): the passes EAP's clean run needs, without its hooks."""
    hf = model.bridge.original_model
    embeds = hf.get_input_embeddings()(batch.clean).detach().requires_grad_()
    with torch.enable_grad():
        logits = hf(inputs_embeds=embeds).logits
        value = get_metric(batch.metric)(logits, batch).float().sum()
        torch.autograd.grad(value, embeds)


# --------------------------------------------------------------------------------------------
# a. GPT-2 small


class AcdcTimeout(Exception):
    """Raised from ACDC's progress callback to stop a run past its time limit."""


def bench_gpt2(args, report: Report, device: torch.device) -> None:
    layers, n_prompts = (2, 8) if args.small else (12, 100)
    with tempfile.TemporaryDirectory() as tmp:
        gpt2_dir = build_gpt2_dir(Path(tmp), layers)
        for dtype in (torch.float32, torch.bfloat16):
            part = f"gpt2-small {str(dtype).removeprefix('torch.')}"
            run = partial(bench_gpt2_dtype, args, report, part, gpt2_dir, device, dtype, n_prompts)
            guarded(report, part, run)


def bench_gpt2_dtype(args, report, part, gpt2_dir, device, dtype, n_prompts) -> None:
    model = acd.load_model(gpt2_dir, device=device, dtype=dtype)
    graph = ComputeGraph.from_model(model)
    batch = acd.load_task("ioi").make_batch(model.tokenizer, n_prompts, 0).to(device)
    report.add(
        part,
        "tokens [batch, pos]; valid edges",
        f"{tuple(batch.clean.shape)}; {int(graph.valid.sum())}",
    )
    f = median_time(lambda: hf_forward(model, batch.clean), args.runs, device)
    report.add(part, "F  bare HF forward", seconds(f))

    def score(method: str, **kw):
        return attribute(model, graph, batch, method, progress=False, **kw)

    for method in ("eap", "eap-ig"):
        s = median_time(lambda m=method: score(m), args.runs, device)
        report.add(part, method, seconds(s, f))
    bench_acdc(args, report, part, model, graph, batch, f, device)
    bench_exact(args, report, part, graph, score, f, device)


def bench_exact(args, report, part, graph, score, f, device) -> None:
    """Exact scoring of every edge, or an extrapolation from a probe when it would be too long."""
    valid = graph.valid.nonzero()
    n_edges = len(valid)
    gen = torch.Generator().manual_seed(0)
    probe = valid[torch.randperm(n_edges, generator=gen)[: min(args.exact_probe, n_edges)]]
    mask = torch.zeros_like(graph.valid)
    mask[probe[:, 0], probe[:, 1]] = True
    score("exact", edge_mask=mask)  # warm-up
    probe_s = once(lambda: score("exact", edge_mask=mask), device)[0]
    estimate = probe_s * n_edges / len(probe)
    if len(probe) == n_edges:
        report.add(part, f"exact, all {n_edges} edges", seconds(probe_s, f))
        return
    report.add(part, f"exact, {len(probe)} edges (probe)", seconds(probe_s, f))
    if estimate > min(args.max_exact_s, left_s(args)):
        report.add(
            part, f"exact, all {n_edges} edges (extrapolated, not run)", seconds(estimate, f)
        )
        return
    report.add(
        part, f"exact, all {n_edges} edges", seconds(once(lambda: score("exact"), device)[0], f)
    )


def bench_acdc(args, report, part, model, graph, batch, f, device) -> None:
    """ACDC over every edge (KL), stopped at --max-acdc-s or the end of --budget-s."""
    label = f"ACDC KL, tau {args.tau}, rows/forward {args.rows}"
    limit = min(args.max_acdc_s, left_s(args))
    if limit < 10:
        report.add(part, label, f"skipped ({left_s(args):.0f} s of --budget-s left)")
        return
    start = time.perf_counter()
    where = {}

    def deadline(visited: int, total: int, kept: int) -> None:
        where.update(visited=visited, total=total)
        if time.perf_counter() - start > limit:
            raise AcdcTimeout

    try:
        s, result = once(
            lambda: acdc(
                model,
                graph,
                batch,
                tau=args.tau,
                rows_per_forward=args.rows,
                progress=False,
                on_progress=deadline,
            ),
            device,
        )
    except AcdcTimeout:
        report.add(
            part,
            label,
            f"> {limit:.0f} s (stopped after {where['visited']} of {where['total']} edges)",
        )
        return
    report.add(part, label, seconds(s, f))
    report.add(
        part,
        "ACDC edges kept / visited; forwards",
        f"{int(result.mask.sum())} / {result.visited}; {result.n_forwards}",
    )


# --------------------------------------------------------------------------------------------
# b. Llama-3-8B shape


def llama_config(small: bool):
    from transformers import LlamaConfig

    shape = (
        dict(
            hidden_size=256,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=896,
        )
        if small
        else dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
        )
    )
    return LlamaConfig(
        vocab_size=LLAMA_VOCAB,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        **shape,
    )


def write_tokenizer_dir(directory: Path, config) -> Path:
    """config.json and a word-level tokenizer (the toy's words, padded with dummy tokens to the
    vocabulary): all ``load_model(..., hf_model=...)`` needs; no weights."""
    toy = embedded_models_dir() / "toy"
    tokenizer = json.loads((toy / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    for i in range(len(vocab), config.vocab_size):
        vocab[f"<dummy{i}>"] = i
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    (directory / "tokenizer_config.json").write_text((toy / "tokenizer_config.json").read_text())
    config.save_pretrained(directory)
    return directory


def build_llama(config, device: torch.device):
    """Random weights allocated directly on ``device`` in bf16: the default dtype is switched
    for the construction, so no fp32 copy (32 GB for 8B parameters) is ever made."""
    from transformers import LlamaForCausalLM

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(torch.bfloat16)  # a no-op unless a module ignored the default dtype


def random_batch(d_vocab: int, n: int, pos: int, device: torch.device) -> PromptBatch:
    """Random clean / corrupted tokens, logit difference of random answers at the last position."""
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, d_vocab, (2, n, pos), generator=gen)
    answers = torch.randint(1, d_vocab, (2, n, 1), generator=gen)
    batch = PromptBatch.from_token_ids(
        tokens[0], tokens[1], correct=answers[0], wrong=answers[1], metric="logit_diff"
    )
    return batch.to(device)


def bench_llama(args, report: Report, device: torch.device) -> None:
    part = "llama-3-8b-shape bf16" if not args.small else "llama-small bf16"
    config = llama_config(args.small)
    start = time.perf_counter()
    hf = build_llama(config, device)
    n_params = sum(p.numel() for p in hf.parameters())
    report.add(
        part,
        "build on device (random, bf16); parameters",
        f"{time.perf_counter() - start:.1f} s; {n_params / 1e9:.2f} B",
    )
    with tempfile.TemporaryDirectory() as tmp:
        model = acd.load_model(write_tokenizer_dir(Path(tmp), config), hf_model=hf)
    graph = ComputeGraph.from_model(model)
    n_prompts = 4 if args.small else 32
    batch = random_batch(model.spec.d_vocab, n_prompts, 32, device)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    report.add(
        part,
        "adapter device, dtype; weights in memory",
        f"{model.device}, {model.dtype}; {gib(weights)}",
    )
    report.add(
        part,
        "tokens [batch, pos]; valid edges",
        f"{tuple(batch.clean.shape)}; {int(graph.valid.sum())}",
    )
    passes = {
        "bare HF forward": lambda: hf_forward(model, batch.clean),
        "HF forward + backward to embeddings": lambda: hf_forward_backward(model, batch),
    }
    for label, fn in passes.items():
        guarded(report, part, partial(timed_with_peak, args, report, part, label, fn, device))
    size = auto_batch_size(model, graph, batch, "eap")
    report.add(part, "EAP auto_batch_size (prompts per chunk)", str(size))

    def eap():
        return attribute(model, graph, batch, "eap", progress=False)

    label = "EAP, per batch"
    guarded(report, part, partial(timed_with_peak, args, report, part, label, eap, device))


def timed_with_peak(args, report, part, label, fn, device) -> None:
    s = median_time(fn, args.runs, device)
    report.add(part, label, f"{seconds(s)}; peak {gib(peak_bytes(fn, device))}")


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="tiny shapes (CPU dry run)")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["gpt2", "llama"], default=None)
    parser.add_argument("--tau", type=float, default=0.001)
    parser.add_argument("--rows", type=int, default=2048, help="ACDC rows per forward")
    parser.add_argument("--exact-probe", type=int, default=1000, help="edges of the exact probe")
    parser.add_argument("--max-exact-s", type=float, default=60.0)
    parser.add_argument("--max-acdc-s", type=float, default=150.0)
    parser.add_argument("--budget-s", type=float, default=500.0, help="the whole run, about")
    args = parser.parse_args()
    args.deadline = time.perf_counter() + args.budget_s
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    report = Report(device_name(device))
    print(
        f"{report.device}; torch {torch.__version__}; median of {args.runs} after a warm-up",
        flush=True,
    )
    if args.only in (None, "llama"):
        guarded(report, "llama", partial(bench_llama, args, report, device))
    if args.only in (None, "gpt2"):
        guarded(report, "gpt2-small", partial(bench_gpt2, args, report, device))
    table = f"{report.device}, torch {torch.__version__}, median of {args.runs}\n\n{report.table()}"
    print("\n" + table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
