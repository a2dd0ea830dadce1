"""Train the embedded default model ``toy`` from scratch, deterministically.

    python -m acd.models.train_toy --out acd/models/toy      # about 10 minutes on 2 CPU cores

The model is an ordinary GPT-2 (``transformers.GPT2LMHeadModel``) with a word-level tokenizer
whose vocabulary is every word of the shipped tasks (tasks/*.toml and their word lists). It is
trained with next-token loss on a fresh stream of clean prompts of the three shipped tasks
(IOI, greater-than, induction), each followed by its answer, so it does the tasks the way the
tasks' own metrics measure them. The same seed gives the same weights, bit for bit, on the
same machine: every random draw comes from seeded generators, dropout is off, and the number
of CPU threads is fixed.

Training prompts come from task seeds ``TRAIN_SEED_BASE`` and up; the quality check
(``acd check-model``) uses seeds below it, which training never sees.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import string
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from acd.models.quality import format_figures, hf_gpt2_runners, task_figures
from acd.tasks import InductionTask, PromptBatch, Task, TemplateTask, load_task

# Training draws its prompts from task seeds >= this; held-out evaluation uses smaller ones.
TRAIN_SEED_BASE = 1_000_000
TASK_NAMES = ("ioi", "greater-than", "induction")
SPECIAL_TOKENS = ("<|endoftext|>", "<pad>", "<unk>")
BOS_ID, PAD_ID = SPECIAL_TOKENS.index("<|endoftext|>"), SPECIAL_TOKENS.index("<pad>")

# Words split on whitespace and punctuation; digit pairs split off so that "1732" is the two
# tokens "17" "32", as GPT-2's BPE splits most years.
WORD_SPLIT = pre_tokenizers.Sequence(
    [
        pre_tokenizers.Split(Regex(r"\d\d"), behavior="isolated"),
        pre_tokenizers.Whitespace(),
    ]
)


def task_vocabulary(tasks: list[Task]) -> list[str]:
    """Every word the tasks can produce, in a stable order (special tokens first)."""
    words: set[str] = set()
    for task in tasks:
        texts: list[str] = []
        if isinstance(task, TemplateTask):
            for clean, corrupted in task.templates:
                texts += [_strip_fields(clean), _strip_fields(corrupted)]
            for values in task.lists.values():
                texts += values
        elif isinstance(task, InductionTask):
            texts += task.pool
        for text in texts:
            words.update(piece for piece, _ in WORD_SPLIT.pre_tokenize_str(text))
    return [*SPECIAL_TOKENS, *sorted(words)]


def _strip_fields(template: str) -> str:
    return " ".join(lit for lit, *_ in string.Formatter().parse(template))


def build_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``vocabulary``, saved later as tokenizer.json."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    tok.pre_tokenizer = WORD_SPLIT
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=64,
    )


def build_config(vocab_size: int, args: argparse.Namespace) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        n_inner=4 * args.d_model,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=BOS_ID,
        eos_token_id=BOS_ID,
        pad_token_id=PAD_ID,
    )


def training_sequences(
    batch: PromptBatch, rng: random.Random, answer_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean prompts followed by one answer, with per-position loss weights.

    Template tasks get one answer drawn from the correct set (greater-than: uniformly among the
    later years), appended after the prompt; the answer position weighs ``answer_weight``.
    Induction sequences are used as they are, every next-token prediction weighing 1 (the
    first half is random, so the model learns to be at chance there).

    Returns ids [N, T+1] and weights [N, T+1] (weight of predicting token t from t-1; 0 for
    padding and position 0).
    """
    n, width = batch.clean.shape
    # batch.clean is right-padded with PAD_ID; one more pad column makes room for the answer.
    ids = torch.cat([batch.clean, torch.full((n, 1), PAD_ID)], dim=1)
    weights = torch.zeros(n, width + 1)
    for i in range(n):
        length = int(batch.lengths[i])
        weights[i, 1:length] = 1.0
        if batch.metric != "logprob":
            choices = batch.correct[i][batch.correct_mask[i]].tolist()
            ids[i, length] = rng.choice(choices)
            weights[i, length] = answer_weight
    return ids, weights


def mixed_batch(
    tasks: list[Task],
    tokenizer: PreTrainedTokenizerFast,
    step: int,
    seed: int,
    per_task: int,
    answer_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: ``per_task`` prompts of every task, padded together."""
    rng = random.Random(f"toy-train:{seed}:{step}")
    parts = []
    for task in tasks:
        task_seed = TRAIN_SEED_BASE + seed * 100_000_000 + step
        batch = task.make_batch(tokenizer, per_task, seed=task_seed)
        parts.append(training_sequences(batch, rng, answer_weight))
    width = max(ids.shape[1] for ids, _ in parts)
    ids = torch.cat(
        [torch.nn.functional.pad(i, (0, width - i.shape[1]), value=PAD_ID) for i, _ in parts]
    )
    weights = torch.cat([torch.nn.functional.pad(w, (0, width - w.shape[1])) for _, w in parts])
    return ids, weights


def weighted_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted next-token cross-entropy. logits [N, T, V], ids [N, T], weights [N, T]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [N, T-1]
    w = weights[:, 1:]
    return (nll * w).sum() / w.sum()


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    tasks = [load_task(name) for name in TASK_NAMES]
    tokenizer = build_tokenizer(task_vocabulary(tasks))
    config = build_config(len(tokenizer), args)
    model = GPT2LMHeadModel(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    start = time.perf_counter()
    for step in range(args.steps):
        ids, weights = mixed_batch(
            tasks, tokenizer, step, args.seed, args.per_task, args.answer_weight
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        loss = weighted_loss(model(ids).logits, ids, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            elapsed = time.perf_counter() - start
            print(f"step {step:5d}  loss {loss.item():.4f}  {elapsed:6.0f} s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0:
            report_quality(model, tokenizer)
    model.eval()
    out = save_model_dir(model, tokenizer, Path(args.out), args, time.perf_counter() - start)
    print(f"saved {out} after {time.perf_counter() - start:.0f} s")
    return out


def report_quality(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast) -> None:
    """Print the held-out task figures (a progress check; it draws no training randomness)."""
    was_training = model.training
    model.eval()
    print(format_figures(task_figures(*hf_gpt2_runners(model), tokenizer, n_prompts=200)))
    model.train(was_training)


def save_model_dir(
    model: GPT2LMHeadModel,
    tokenizer: PreTrainedTokenizerFast,
    out: Path,
    args: argparse.Namespace,
    seconds: float,
) -> Path:
    """Write the HF model directory atomically: into a temporary sibling, then rename."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "generation_config.json").unlink(missing_ok=True)
        recipe = {k: v for k, v in vars(args).items() if k not in ("out",)}
        recipe["train_seconds"] = round(seconds, 1)
        recipe["command"] = "python -m acd.models.train_toy " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in recipe.items() if k != "train_seconds"
        )
        (tmp / "training.json").write_text(json.dumps(recipe, indent=2) + "\n")
        # mkdtemp makes a private directory; a model directory is ordinary shared data.
        tmp.chmod(0o755)
        for file in tmp.iterdir():
            file.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m acd.models.train_toy",
        description="Train the embedded default model (toy) from scratch, deterministically.",
        epilog="example: python -m acd.models.train_toy --out acd/models/toy --seed 0",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "toy"), help="model dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--per-task", type=int, default=24, help="prompts per task per step")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--answer-weight", type=float, default=4.0)
    parser.add_argument(
        "--threads", type=int, default=2, help="CPU threads (fixed for determinism)"
    )
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=0, help="print task figures every N")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[\w./-]+", args.out):
        parser.error(f"--out {args.out!r}: use a plain path")
    return args


def main(argv: list[str] | None = None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
