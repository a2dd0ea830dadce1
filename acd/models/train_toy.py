"""Train the embedded default model ``toy`` from scratch, deterministically.

    python -m acd.models.train_toy --out acd/models/toy      # about 15 minutes on 2 CPU cores

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
import functools
import json
import math
import operator
import os
import random
import re
import shutil
import string
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from acd.models.quality import (
    copy_rule_figures,
    hf_gpt2_runners,
    induction_figures,
    ioi_cell_figures,
    ioi_lean,
    role_figures,
)
from acd.roles import hf_gpt2_patterns
from acd.tasks import (
    InductionTask,
    PromptBatch,
    PromptPair,
    Task,
    TemplateTask,
    load_task,
    tasks_dir,
)

# The longest prompt with solved context in front (--context): the model's 64 positions less
# BOS, the answer and a margin.
MAX_CONTEXT_TOKENS = 60
# Training draws its prompts from task seeds >= this; held-out evaluation uses smaller ones.
TRAIN_SEED_BASE = 1_000_000
TASK_NAMES = ("ioi", "greater-than", "induction")
# Generic texts that can be mixed into the training stream (see mixed_parts).
GENERIC_TEXTS = ("text", "ctext", "icl", "pairs", "chunks")
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


def training_tasks(task_dir: str | None = None) -> list[Task]:
    """The three tasks trained on: ``task_dir``/<name>.toml, where ``task_dir`` is a folder, or
    a folder among the shipped tasks (e.g. "varied": the shipped tasks with the names, years and
    repeats at varied positions); None or "shipped": the shipped task files themselves."""
    if task_dir in (None, "shipped"):
        return [load_task(name) for name in TASK_NAMES]
    folder = Path(task_dir)
    if not folder.is_dir() and (tasks_dir() / task_dir).is_dir():
        folder = tasks_dir() / task_dir
    return [load_task(folder / f"{name.replace('-', '_')}.toml") for name in TASK_NAMES]


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
    batch: PromptBatch,
    rng: random.Random,
    answer_weight: float,
    unscored_weight: float = 1.0,
    prompt_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean prompts followed by one answer, with per-position loss weights.

    Template tasks get one answer drawn from the correct set (greater-than: uniformly among the
    later years), appended after the prompt; the answer position weighs ``answer_weight``.
    Induction sequences are used as they are, every next-token prediction weighing 1 (the
    first half is random, so the model learns to be at chance there); ``unscored_weight`` < 1
    weighs the predictions the task's metric does not score (the random prefix and first
    half) less than the repeat's: their gradients carry no copying signal, only noise (and,
    since a sequence never repeats a word before its repeat, a small reward for avoiding the
    words seen); 0 trains the repeat only. ``prompt_weight`` weighs a template prompt's own
    next-word predictions (its answer weighs ``answer_weight``): in IOI, predicting S2 after
    "When Kim and Ann went to the park," is a coin toss between the two names, which rewards
    copying both names equally; 0 trains the answer only.

    Returns ids [N, T+1] and weights [N, T+1] (weight of predicting token t from t-1; 0 for
    padding and position 0).
    """
    n, width = batch.clean.shape
    # batch.clean is right-padded with PAD_ID; one more pad column makes room for the answer.
    ids = torch.cat([batch.clean, torch.full((n, 1), PAD_ID)], dim=1)
    weights = torch.zeros(n, width + 1)
    for i in range(n):
        length = int(batch.lengths[i])
        weights[i, 1:length] = 1.0 if batch.metric == "logprob" else prompt_weight
        if batch.metric == "logprob" and unscored_weight != 1.0:
            # Position t's logits predict token t + 1, whose weight sits at t + 1.
            scored = batch.score_mask[i, : width - 1]
            weights[i, 1:length] = torch.where(scored, 1.0, unscored_weight)[: length - 1]
        if batch.metric != "logprob":
            choices = batch.correct[i][batch.correct_mask[i]].tolist()
            ids[i, length] = rng.choice(choices)
            weights[i, length] = answer_weight
    return ids, weights


def with_solved_context(
    task: TemplateTask, pairs: list[PromptPair], rng: random.Random, most: int, max_tokens: int
) -> list[PromptPair]:
    """Each pair with 0..``most`` (uniformly) solved prompts of the same task in front, e.g. IOI's
    "When Kim and Ann went to the park, Ann gave a ball to Kim." before the prompt.

    Every word of a context sentence's answer or wrong continuation differs from the prompt's
    own, so in IOI every name of the context occurs twice and the prompt's indirect object is
    still the only name that occurs once: a lookup of "the name in the first name slot" or
    "any name but the last one" fails, only "the name that did not repeat" answers. (It was
    meant to rule out copying every name and cancelling the repeated ones too; it does not —
    cancelling is linear and copes with any number of repeated names; docs/models.md.)
    Both prompts of a pair get the same context (equal token lengths kept); context sentences
    that would make the clean prompt longer than ``max_tokens`` tokens are left out. The spans
    are dropped (training does not use them).
    """
    out = []
    for pair in pairs:
        taken = set(pair.answers) | set(pair.wrongs)
        budget = max_tokens - _word_count(pair.clean) - 2
        context = ""
        for _ in range(rng.randint(0, most)):
            for _attempt in range(20):
                sentence = task.prompt_pairs(1, seed=rng.randrange(2**31))[0]
                words = set(sentence.answers) | set(sentence.wrongs)
                if not words & taken:
                    break
            else:
                continue
            text = sentence.clean + rng.choice(sentence.answers) + ". "
            cost = _word_count(text)
            if cost > budget:
                break
            taken |= words
            budget -= cost
            context += text
        out.append(
            replace(pair, clean=context + pair.clean, corrupted=context + pair.corrupted, spans=())
        )
    return out


def _word_count(text: str) -> int:
    """Tokens of ``text`` for the toy's word-level tokenizer (its own pre-tokenizer's pieces)."""
    return len(WORD_SPLIT.pre_tokenize_str(text))


def mixed_parts(
    tasks: list[Task],
    tokenizer: PreTrainedTokenizerFast,
    step: int,
    seed: int,
    per_task: dict[str, int],
    answer_weight: float,
    curriculum: int = 0,
    icl_interrupt: float = 0.0,
    text_steps: int = 0,
    from_step: dict[str, int] | None = None,
    unscored_weight: float = 1.0,
    context: dict[str, int] | None = None,
    prompt_weight: dict[str, float] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One training step's data: ``per_task[name]`` prompts of each task (and of the generic
    texts ``text`` and ``icl``), as (ids [N, T], weights [N, T]) per part, each padded to its
    own width (``parts_loss`` runs one forward per part).
    """
    rng = random.Random(f"toy-train:{seed}:{step}")
    # a part listed in from_step joins the mixture only from that step on
    per_task = {k: (0 if step < (from_step or {}).get(k, 0) else n) for k, n in per_task.items()}
    parts = []
    for task in tasks:
        task_seed = TRAIN_SEED_BASE + seed * 100_000_000 + step
        n = per_task.get(task.name, 0)
        if n == 0:
            continue
        if isinstance(task, InductionTask) and curriculum:
            task = induction_curriculum(task, step, curriculum)
        pairs = task.prompt_pairs(n, task_seed)
        most = (context or {}).get(task.name, 0)
        if most and isinstance(task, TemplateTask):
            pairs = with_solved_context(task, pairs, rng, most, MAX_CONTEXT_TOKENS)
        batch = task.encode(pairs, tokenizer)
        weight = (prompt_weight or {}).get(task.name, 1.0)
        parts.append(training_sequences(batch, rng, answer_weight, unscored_weight, weight))
    words = list(range(len(SPECIAL_TOKENS), len(tokenizer)))
    if per_task.get("text", 0) and (not text_steps or step < text_steps):
        parts.append(skip_bigram_text(words, per_task["text"], rng, seed, (16, 48)))
    if per_task.get("ctext", 0):
        parts.append(class_bigram_text(words, per_task["ctext"], rng, seed, (16, 48)))
    if per_task.get("icl", 0):
        parts.append(in_context_bigram_text(words, per_task["icl"], rng, (24, 48), icl_interrupt))
    if per_task.get("chunks", 0):
        parts.append(chunk_repeat_text(words, per_task["chunks"], rng))
    if per_task.get("pairs", 0):
        parts.append(in_context_pairs_text(words, per_task["pairs"], rng, (24, 48)))
    return parts


def init_sinusoidal_positions(model: GPT2LMHeadModel) -> None:
    """Start the learned position embeddings from sinusoids (Vaswani et al. 2017), scaled to the
    token embeddings' size.

    A sinusoid code turns "the previous position" into a fixed linear map of the current one, so
    a previous-token head is a simple function of W_Q and W_K from the start; random position
    embeddings leave a long plateau before any head can find the previous token, and induction
    heads cannot form before a previous-token head exists (Olsson et al. 2022).
    """
    wpe = model.transformer.wpe.weight
    n_pos, d = wpe.shape
    position = torch.arange(n_pos, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(-math.log(10_000.0) * torch.arange(0, d, 2, dtype=torch.float64) / d)
    table = torch.zeros(n_pos, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    scale = model.config.initializer_range * math.sqrt(2.0)  # each entry's std -> the init std
    with torch.no_grad():
        wpe.copy_((table * scale).to(wpe.dtype))


def induction_curriculum(task: InductionTask, step: int, steps: int) -> InductionTask:
    """The induction task with its longest half and prefix grown linearly over ``steps`` steps,
    from the shortest half and no prefix to the task's full ranges.

    Short sequences first: with few keys to choose from, the induction head's attention finds
    its target sooner (the plateau before the phase change grows with the context length).
    """
    frac = min(1.0, step / steps)
    lo, hi = task.half_lengths
    p_lo, p_hi = task.prefix_lengths
    half_hi = max(lo, round(lo + (hi - lo) * frac))
    prefix_hi = max(p_lo, round(p_lo + (p_hi - p_lo) * frac))
    return replace(task, half_lengths=(lo, half_hi), prefix_lengths=(p_lo, prefix_hi))


def skip_bigram_text(
    words: list[int], n: int, rng: random.Random, table_seed: int, length: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generic text: ``n`` sequences over ``words`` in which each word is, with probability 1/2,
    a fixed function of the word *two* back (else a random word). No word occurs twice in a
    sequence (a repeat is redrawn from the unused words). BOS first, right-padded.

    This is the share of generic next-word text in the training stream. Its point: the word two
    back predicts the next one, so a head that attends to the previous token pays off on its own
    (natural text gives previous-token heads the same reason, through its n-gram statistics).
    Induction heads compose with a previous-token head (Olsson et al. 2022); without a reason
    for one to exist first, a model trained only on tasks sits on a long plateau.

    Why no repeats: if a word could recur, "find the earlier copy of the *previous* word and
    predict the word two after it" would pay off here too, and models trained with repeats grew
    that circuit (a 3-back head keyed against the query's previous token) instead of the
    textbook induction head, which keys the *current* token against a previous-token head.

    Returns ids [n, T] and weights [n, T] (1 on every real next-token prediction).
    """
    table = words[:]
    random.Random(f"skip-bigram:{table_seed}").shuffle(table)  # the fixed map, one per seed
    follow = dict(zip(words, table))
    rows = []
    for _ in range(n):
        row = [BOS_ID] + rng.sample(words, 2)
        used = set(row)
        for _ in range(rng.randint(*length) - 2):
            word = follow[row[-2]] if rng.random() < 0.5 else rng.choice(words)
            while word in used:
                word = rng.choice(words)
            row.append(word)
            used.add(word)
        rows.append(row)
    return _padded(rows)


def class_bigram_text(
    words: list[int],
    n: int,
    rng: random.Random,
    table_seed: int,
    length: tuple[int, int],
    classes: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generic text in which the next word depends on the current word *and* the class of the
    previous one: with probability 1/2 it is ``table[c](current)``, where ``c`` is the previous
    word's class (one of ``classes`` fixed random classes), else a random word. No word occurs
    twice in a sequence (a repeat is redrawn from the unused words). BOS first, right-padded.

    A previous-token head pays off on its own here (it brings the previous word's class to the
    current position), but the previous word alone predicts nothing about the next one: the
    tables are independent random maps of the *current* word. Skip-bigram text (where the word
    two back predicts the next) made the previous word the model's query, and its copying
    circuit inherited that query (docs/models.md); here the current word stays the query.

    Returns ids [n, T] and weights [n, T] (1 on every real next-token prediction).
    """
    table_rng = random.Random(f"class-bigram:{table_seed}")
    word_class = {w: table_rng.randrange(classes) for w in words}
    tables = []
    for _ in range(classes):
        image = words[:]
        table_rng.shuffle(image)
        tables.append(dict(zip(words, image)))
    rows = []
    for _ in range(n):
        row = [BOS_ID] + rng.sample(words, 2)
        used = set(row)
        for _ in range(rng.randint(*length) - 2):
            table = tables[word_class[row[-2]]]
            word = table[row[-1]] if rng.random() < 0.5 else rng.choice(words)
            while word in used:
                word = rng.choice(words)
            row.append(word)
            used.add(word)
        rows.append(row)
    return _padded(rows)


def in_context_bigram_text(
    words: list[int],
    n: int,
    rng: random.Random,
    length: tuple[int, int],
    interrupt: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generic text with in-context regularities: each sequence picks 8-16 words and a random
    successor for each, then walks it (the successor with probability 0.9, else one of the
    sequence's words at random). BOS first, right-padded.

    What follows a word is known only from earlier in the same sequence, many times over, as
    names and phrases recur within a document: the denser, noisier cousin of the induction
    task, whose only solution is the same previous-token -> induction head circuit.

    ``interrupt``: after each word, with this probability, a random word from outside the
    sequence's words comes between it and its successor. The successor is then still predicted
    by the word's own earlier copy (the textbook induction head), while "the word two after the
    *previous* word's earlier copy" is wrong there and finds nothing one step later — the rule
    that models trained on skip-bigram text otherwise grow instead (docs/models.md).

    Returns ids [n, T] and weights [n, T] (1 on every real next-token prediction).
    """
    rows = []
    for _ in range(n):
        chosen = rng.sample(words, rng.randint(8, 16))
        follow = {w: rng.choice(chosen) for w in chosen}
        outside = [w for w in words if w not in follow]
        row = [BOS_ID, rng.choice(chosen)]
        last = row[-1]  # the walk's current word (an interruption does not move it)
        target = rng.randint(*length) + 1
        while len(row) < target:
            if interrupt and rng.random() < interrupt:
                row.append(rng.choice(outside))
            last = follow[last] if rng.random() < 0.9 else rng.choice(chosen)
            row.append(last)
        rows.append(row[:target])
    return _padded(rows)


def in_context_pairs_text(
    words: list[int], n: int, rng: random.Random, length: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generic text of recurring pairs behind random words: each sequence picks 6-12 key words
    and a random value word for each, then repeats "<random word> <key> <value of key>" with
    keys drawn at random. BOS first, right-padded.

    A value is known only from the key's earlier occurrence in the same sequence, and the word
    before a key is random, so the only way to predict it is the textbook induction circuit:
    attend from the key to the position after its earlier copy (found through a previous-token
    head's output there, K-composition) and copy the word at that position. Matching the
    *previous* word instead (the circuit that skip-bigram text alone rewards) finds nothing.

    Returns ids [n, T] and weights [n, T] (1 on every real next-token prediction).
    """
    rows = []
    for _ in range(n):
        keys = rng.sample(words, rng.randint(6, 12))
        value = {k: rng.choice(words) for k in keys}
        row = [BOS_ID]
        target = rng.randint(*length)
        while len(row) < target:
            key = rng.choice(keys)
            row += [rng.choice(words), key, value[key]]
        rows.append(row)
    return _padded(rows)


def chunk_repeat_text(
    words: list[int], n: int, rng: random.Random, chunk: tuple[int, int] = (2, 3)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Repeats in shuffled chunks: 0-10 random words, a sequence of 6-24 distinct words, then
    the same words again cut into chunks of ``chunk`` words in shuffled order ("A B C D E F"
    then "E F A B C D"). BOS first, right-padded.

    Within a prompt the distance from a word to its earlier copy changes at every chunk, so a
    copy keyed by the repeat's period (a fixed offset back) fails at each chunk's start, and
    "two after the previous word's earlier copy" fails at each chunk's first word; only
    content matching — the textbook induction head — predicts every repeated word after the
    second half's first.

    Returns ids [n, T] and weights [n, T] (1 on every real next-token prediction).
    """
    rows = []
    for _ in range(n):
        prefix, half = rng.randint(0, 10), rng.randint(6, 24)
        drawn = rng.sample(words, prefix + half)
        body = drawn[prefix:]
        pieces, start = [], 0
        while start < half:
            size = rng.randint(*chunk)
            pieces.append(body[start : start + size])
            start += size
        rng.shuffle(pieces)
        rows.append([BOS_ID, *drawn, *(w for piece in pieces for w in piece)])
    return _padded(rows)


def _padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID)
    weights = torch.zeros(len(rows), width)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        weights[i, 1 : len(row)] = 1.0
    return ids, weights


def parse_mix(spec: str, option: str = "--per-task") -> dict[str, int]:
    """``"24"`` -> 24 prompts of every task; ``"ioi=16,induction=32"`` -> those (others 0).
    Also the counts of ``--from-step`` and ``--context`` (``option`` names it in errors)."""
    if spec.isdigit():
        return dict.fromkeys(TASK_NAMES, int(spec))
    names = TASK_NAMES + GENERIC_TEXTS
    return _parse_named(spec, names, r"[0-9]+", int, f"{option} {spec!r}: use N or name=N,...")


def parse_weights(spec: str) -> dict[str, float]:
    """``"ioi=0,greater-than=0.5"`` -> those weights per template task (others keep 1)."""
    usage = f"--prompt-weight {spec!r}: use name=W,... (W >= 0)"
    return _parse_named(spec, TASK_NAMES, r"[0-9]+(\.[0-9]*)?", float, usage)


def _parse_named(spec: str, names: tuple[str, ...], value: str, cast, usage: str) -> dict:
    """``"a=1,b=2"`` -> {"a": cast("1"), "b": cast("2")}; every name among ``names``, every
    value matching the regex ``value``, else ValueError(``usage`` and the names)."""
    out = {}
    for part in spec.split(","):
        name, _, text = part.partition("=")
        if name not in names or not re.fullmatch(value, text):
            raise ValueError(f"{usage} with names {names}")
        out[name] = cast(text)
    return out


def parts_loss(
    model: GPT2LMHeadModel, parts: list[tuple[torch.Tensor, torch.Tensor]]
) -> torch.Tensor:
    """The step's weighted next-token loss over all parts, one forward per part.

    Each part is padded to its own width only (one batch padded to the longest part would spend
    about half of the step on padding once induction prompts vary in length). Right padding
    never reaches a real position through causal attention, so this is the loss of one batch.
    """
    total = _tensor_sum([weights[:, 1:].sum() for _, weights in parts])
    return _tensor_sum(
        [
            weighted_loss(model(ids).logits, ids, weights) * weights[:, 1:].sum() / total
            for ids, weights in parts
        ]
    )


def _tensor_sum(values: list[torch.Tensor]) -> torch.Tensor:
    """values[0] + values[1] + ..., in order: what the builtin sum gives (0 + x is x exactly),
    typed as a tensor."""
    return functools.reduce(operator.add, values)


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
    tasks = training_tasks(args.task_dir)
    tokenizer = build_tokenizer(task_vocabulary(tasks))
    config = build_config(len(tokenizer), args)
    model = GPT2LMHeadModel(config)
    if args.sinusoidal_positions:
        init_sinusoidal_positions(model)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    per_task = parse_mix(args.per_task)
    from_step = parse_mix(args.from_step, "--from-step") if args.from_step else None
    context = parse_mix(args.context, "--context") if args.context else None
    prompt_weight = parse_weights(args.prompt_weight) if args.prompt_weight else None
    start = time.perf_counter()
    for step in range(args.steps):
        parts = mixed_parts(
            tasks,
            tokenizer,
            step,
            args.seed,
            per_task,
            args.answer_weight,
            args.curriculum,
            args.icl_interrupt,
            args.text_steps,
            from_step,
            args.unscored_weight,
            context,
            prompt_weight,
        )
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.warmup)
        loss = parts_loss(model, parts)
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
    """Print one line of held-out figures (a progress check; it draws no training randomness):
    the repeat NLL at half lengths never seen as such in a batch of its own (with and without
    random words in front), the worst IOI cell, and the best previous-token and induction
    scores, so the induction phase change shows as it happens, and the head that attends from
    IOI's final position most to IO over S (a name mover attends mostly to IO: "IO/S" shown)."""
    was_training = model.training
    model.eval()
    run, _ = hf_gpt2_runners(model)
    figures = induction_figures(run, tokenizer, 40, seed=0)
    ioi = ioi_cell_figures(run, tokenizer, 40, seed=0)
    patterns = hf_gpt2_patterns(model)
    roles = role_figures(patterns, tokenizer, 20, seed=0)[0]
    current, previous = (f.value for f in copy_rule_figures(run, tokenizer, 40, seed=0))
    lean_head, to_io, to_s = ioi_lean(patterns, tokenizer, 40, seed=0)
    nll = " ".join(f"{f.value:.2f}" for f in figures)
    worst_ioi = min(f.value for f in ioi if "accuracy" in f.name)
    print(
        f"    repeat NLL {nll} | worst IOI cell acc {worst_ioi:.2f} | "
        f"prev {roles[0].value:.2f} induction {roles[1].value:.2f} | "
        f"copy probe current {current:.2f} previous {previous:.2f} | "
        f"END→IO/S {lean_head} {to_io:.2f}/{to_s:.2f}",
        flush=True,
    )
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
            f"--{k.replace('_', '-')} {v}"
            for k, v in recipe.items()
            if k != "train_seconds" and v is not None
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
    parser.add_argument(
        "--task-dir",
        default="varied",
        help="train on DIR/{ioi,greater_than,induction}.toml, DIR a folder or one in the shipped "
        "tasks (default: varied, the shipped tasks with everything moved around; 'shipped': "
        "the shipped task files themselves)",
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument(
        "--per-task",
        default="ioi=16,greater-than=12,induction=48,icl=16",
        help="prompts per task per step: N for every task, or e.g. ioi=24,induction=32",
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--answer-weight", type=float, default=4.0)
    parser.add_argument(
        "--icl-interrupt",
        type=float,
        default=0.0,
        help="icl text: probability that a random outside word interrupts the walk after a word",
    )
    parser.add_argument(
        "--from-step",
        default=None,
        help="parts that join the mixture later, e.g. pairs=1000,chunks=800 (names as --per-task)",
    )
    parser.add_argument(
        "--text-steps",
        type=int,
        default=0,
        help="mix the skip-bigram text in for the first N steps only (0: every step)",
    )
    parser.add_argument(
        "--curriculum",
        type=int,
        default=0,
        help="grow induction's half length and prefix to their full ranges over N steps",
    )
    parser.add_argument(
        "--sinusoidal-positions",
        type=int,
        default=0,
        help="1: start the position embeddings from sinusoids (see init_sinusoidal_positions)",
    )
    parser.add_argument(
        "--unscored-weight",
        type=float,
        default=0.0,
        help="weight of an induction prompt's unscored predictions (its random prefix and "
        "first half) against its repeat's 1; 0 trains the repeat only",
    )
    parser.add_argument(
        "--context",
        default="ioi=2",
        help="put 0..N solved prompts of the same task before each prompt, e.g. ioi=2 "
        "(see with_solved_context)",
    )
    parser.add_argument(
        "--prompt-weight",
        default=None,
        help="weight of a template task's prompt words against its answer's, e.g. ioi=0 "
        "(default 1 for every task; see training_sequences)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="CPU threads (fixed for determinism: another count sums in another order)",
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
