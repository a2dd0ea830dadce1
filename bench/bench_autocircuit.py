"""auto-circuit's EAP against a bare forward/backward, to compare with bench_engine.py's ratio.

Runs in its OWN virtual environment, not in acd's: auto-circuit 1.0.1 needs TransformerLens 2.x
(``HookedTransformer``, removed in 4.0), which cannot share an environment with acd's 4.x.

    python -m venv /tmp/acvenv
    /tmp/acvenv/bin/pip install torch==2.13.0 auto-circuit==1.0.1 "transformer-lens>=2,<3"
    /tmp/acvenv/bin/pip install "pyarrow<21"   # TL 2.x pins numpy < 2; newer pyarrow needs 2
    OMP_NUM_THREADS=1 /tmp/acvenv/bin/python bench/bench_autocircuit.py [--runs 3] [--layers 12]

The model is GPT-2-small-shaped (``HookedTransformerConfig``, random weights, vocabulary 50257,
no download) and set up as auto-circuit's own ``load_tl_model`` does (per-head results, split
q/k/v inputs, hook_mlp_in, parameters frozen), but without LayerNorm folding, which changes
neither shapes nor costs. 8 prompts x 16 random tokens, corrupted = other random tokens. Every
time is the median of ``--runs`` runs after one warm-up, on 1 thread:

    F     a bare forward, no gradients, of three models of the same shape:
            hf     Hugging Face ``GPT2LMHeadModel`` (bench_engine.py's F: acd's denominator)
            tl     the HookedTransformer with TransformerLens's default hooks
            tl+    the HookedTransformer with the hooks auto-circuit switches on (per-head
                   results and q/k/v inputs): slower, so the ratio against it flatters EAP
    B     backward from the logit difference to the embeddings, parameters frozen (the forward
          runs first, untimed), of the same model
    EAP   ``mask_gradient_prune_scores(grad_function="logit", answer_function="avg_diff",
          mask_val=0.0)`` on the model wrapped by ``patchable_model(factorized=True,
          separate_qkv=True)``: auto-circuit's fast EAP (its docs: exactly
          ``edge_attribution_patching_prune_scores``), corrupted source outputs included
          (``batch_src_ablations``), every position at once (``seq_len=None``), as acd sums
          over positions.

It prints EAP / (3F + B), the figure bench_engine.py reports for acd (target <= 1.3), and
EAP / (2F + B), against each model's F and B; the ``hf`` row is the one to compare with acd's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

N_PROMPTS = 8
N_TOKENS = 16
GPT2_VOCAB = 50257


def median_time(fn, runs: int) -> float:
    """Median wall time of ``fn()`` in seconds, over ``runs`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_model(n_layers: int):
    """A GPT-2-small-shaped HookedTransformer with random weights, configured for edges."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=n_layers,
        d_model=768,
        n_ctx=1024,
        d_head=64,
        n_heads=12,
        d_mlp=3072,
        d_vocab=GPT2_VOCAB,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    for param in model.parameters():
        param.requires_grad = False
    return model


def enable_edge_hooks(model) -> None:
    """As auto-circuit's load_tl_model: the hooks its edge graph needs."""
    model.cfg.use_attn_result = True
    model.cfg.use_attn_in = True
    model.cfg.use_split_qkv_input = True
    model.cfg.use_hook_mlp_in = True


def build_hf_model(n_layers: int):
    """Hugging Face GPT-2 of the same shape, random weights, frozen (bench_engine.py's F, B)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=GPT2_VOCAB, n_layer=n_layers)).eval()
    model.requires_grad_(False)
    return model


def make_prompts():
    """(clean, corrupted, answers, wrong answers): random tokens, one answer each."""
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(1, GPT2_VOCAB, (N_PROMPTS, N_TOKENS), generator=gen)
    corrupted = torch.randint(1, GPT2_VOCAB, (N_PROMPTS, N_TOKENS), generator=gen)
    answers = torch.randint(1, GPT2_VOCAB, (2, N_PROMPTS, 1), generator=gen)
    return clean, corrupted, answers[0], answers[1]


def logit_diff(logits: torch.Tensor, answers: torch.Tensor, wrongs: torch.Tensor) -> torch.Tensor:
    """Mean last-position logit difference (what auto-circuit's ``avg_diff`` computes)."""
    last = logits[:, -1]
    return (last.gather(1, answers) - last.gather(1, wrongs)).mean()


def time_backward(model, clean, answers, wrongs) -> float:
    """Backward alone, from the logit difference to the embeddings (forward untimed)."""
    if not hasattr(model, "run_with_hooks"):  # Hugging Face
        embeds = model.get_input_embeddings()(clean).detach().requires_grad_()
        with torch.enable_grad():
            value = logit_diff(model(inputs_embeds=embeds).logits, answers, wrongs)
            start = time.perf_counter()
            torch.autograd.grad(value, embeds)
        return time.perf_counter() - start
    held = {}

    def grab(act, hook):
        held["embeds"] = act.detach().requires_grad_()
        return held["embeds"]

    with torch.enable_grad():
        logits = model.run_with_hooks(clean, fwd_hooks=[("blocks.0.hook_resid_pre", grab)])
        value = logit_diff(logits, answers, wrongs)
        start = time.perf_counter()
        torch.autograd.grad(value, held["embeds"])
    return time.perf_counter() - start


def median_backward(model, clean, answers, wrongs, runs: int) -> float:
    time_backward(model, clean, answers, wrongs)
    return statistics.median(time_backward(model, clean, answers, wrongs) for _ in range(runs))


def forward_backward(model, clean, answers, wrongs, runs: int) -> tuple[float, float]:
    """(F, B) of ``model`` on the clean prompts, medians."""
    with torch.no_grad():
        f = median_time(lambda: model(clean), runs)
    return f, median_backward(model, clean, answers, wrongs, runs)


def autocircuit_eap(model, clean, corrupted, answers, wrongs):
    """(patchable model, function running auto-circuit's EAP on the 8 prompts)."""
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
    from auto_circuit.utils.graph_utils import patchable_model

    dataset = PromptDataset(clean, corrupted, list(answers), list(wrongs))
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=N_PROMPTS)
    patchable = patchable_model(
        model, factorized=True, slice_output="last_seq", separate_qkv=True, device="cpu"
    )

    def run():
        return mask_gradient_prune_scores(
            patchable,
            loader,
            None,
            grad_function="logit",
            answer_function="avg_diff",
            mask_val=0.0,
        )

    return patchable, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12, help="12: GPT-2 small")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from importlib.metadata import version

    import auto_circuit  # noqa: F401  (fail early, before the slow model build)

    clean, corrupted, answers, wrongs = make_prompts()
    prompts = (clean, answers, wrongs, args.runs)
    passes = {"hf": forward_backward(build_hf_model(args.layers), *prompts)}
    model = build_model(args.layers)
    passes["tl"] = forward_backward(model, *prompts)
    enable_edge_hooks(model)
    passes["tl+"] = forward_backward(model, *prompts)
    patchable, run = autocircuit_eap(model, clean, corrupted, answers, wrongs)
    eap = median_time(run, args.runs)
    scores = run()
    n_scored = sum(s.numel() for s in scores.values())
    versions = f"torch {torch.__version__}, transformer-lens {version('transformer-lens')}"
    threads = f"{torch.get_num_threads()} thread(s)"
    print(f"auto-circuit {version('auto-circuit')}, {versions}, {threads}, median of {args.runs}")
    print(f"GPT-2-small-shaped, {args.layers} layers, tokens ({N_PROMPTS}, {N_TOKENS})")
    print(f"edges: {len(patchable.edges)} (mask entries scored: {n_scored})")
    print(f"EAP (mask_gradient, mask 0): {1000 * eap:.1f} ms")
    print("| F, B of | F ms | B ms | EAP / (3F + B) | EAP / (2F + B) |")
    print("|---|---|---|---|---|")
    for name, (f, b) in passes.items():
        print(
            f"| {name} | {1000 * f:.1f} | {1000 * b:.1f} | {eap / (3 * f + b):.2f} "
            f"| {eap / (2 * f + b):.2f} |"
        )


if __name__ == "__main__":
    main()
