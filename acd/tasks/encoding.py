"""Text to token ids: ``encode_pairs`` tokenizes prompt pairs for one tokenizer and validates
every pair on the way (unknown words, clean/corrupted length, one-token answers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from acd.errors import TaskError
from acd.tasks.batch import METRIC_NAMES, PromptBatch, PromptPair


def encode_pairs(pairs: Sequence[PromptPair], tokenizer: Any, metric: str) -> PromptBatch:
    """Tokenize and validate prompt pairs for one tokenizer.

    Raises TaskError naming the offending text when a word is unknown to the tokenizer, when a
    clean prompt and its corrupted twin differ in token length, or when an answer is not one
    token. The metric reads the last real position of each prompt, or (``score_from_word``)
    every position from that word on that predicts a word of the prompt.
    """
    if metric not in METRIC_NAMES:
        raise TaskError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}")
    if not pairs:
        raise TaskError("a task needs at least one prompt pair")
    clean_ids = _encode_texts(tokenizer, [p.clean for p in pairs])
    corrupt_ids = _encode_texts(tokenizer, [p.corrupted for p in pairs])
    for p, c_ids, x_ids in zip(pairs, clean_ids, corrupt_ids):
        _check_known_tokens(tokenizer, p.clean, c_ids)
        _check_known_tokens(tokenizer, p.corrupted, x_ids)
        if len(c_ids) != len(x_ids):
            raise TaskError(
                f"clean prompt {p.clean!r} has {len(c_ids)} tokens but its corrupted prompt "
                f"{p.corrupted!r} has {len(x_ids)}; they must have the same length"
            )
    correct = _answer_ids(tokenizer, pairs, clean_ids, "answers")
    wrong = _answer_ids(tokenizer, pairs, clean_ids, "wrongs")
    if metric in ("logit_diff", "prob_diff"):
        for p, c, w in zip(pairs, correct, wrong):
            if not c or not w:
                raise TaskError(f"prompt {p.clean!r} needs both an answer and a wrong answer")
    bos_offset = 1 if tokenizer.bos_token_id is not None else 0
    return PromptBatch.from_token_ids(
        clean_ids,
        corrupt_ids,
        correct=correct,
        wrong=wrong,
        metric=metric,
        score_mask=_score_mask(pairs, [len(ids) for ids in clean_ids], bos_offset),
        pad_id=_pad_id(tokenizer),
        pairs=pairs,
    )


def _score_mask(pairs: Sequence[PromptPair], lengths: list[int], bos_offset: int) -> torch.Tensor:
    """[N, T] bool: each prompt's last real token, or (``score_from_word``) the positions whose
    next token is that word or a later one."""
    mask = torch.zeros(len(pairs), max(lengths), dtype=torch.bool)
    for i, (p, length) in enumerate(zip(pairs, lengths)):
        if p.score_from_word is None:
            mask[i, length - 1] = True
        else:
            # Position t predicts token t + 1 (one token per word is checked by the induction
            # kind); from_token_ids then sets each scored position's target to token t + 1.
            first = bos_offset + p.score_from_word - 1
            mask[i, first : length - 1] = True
    return mask


def _encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, BOS first where the tokenizer has one.

    BOS is added by hand (not by ``add_special_tokens``) so that GPT-2 style tokenizers, which
    add nothing, and Llama style ones, which add BOS, give the same layout.
    """
    if not texts:
        return []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The Rust tokenizer directly: the HF wrapper's per-text conversion doubles the cost.
        encoded = [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    else:
        encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    return [([bos] if bos is not None else []) + list(ids) for ids in encoded]


def _check_known_tokens(tokenizer: Any, text: str, ids: list[int]) -> None:
    """TaskError naming the words of ``text`` the tokenizer maps to its unknown token.

    ``ids`` starts with the BOS token where the tokenizer has one; it is not part of the text
    and is skipped (GPT-2's unknown token *is* its BOS token, ``<|endoftext|>``).
    """
    unk = tokenizer.unk_token_id
    own_ids = ids[1:] if tokenizer.bos_token_id is not None else ids
    if unk is not None and unk in own_ids:
        words = [
            w
            for w in text.replace(",", " ").replace(".", " ").split()
            if tokenizer.unk_token_id in tokenizer(w, add_special_tokens=False)["input_ids"]
        ]
        raise TaskError(
            f"prompt {text!r}: {', '.join(map(repr, words)) or 'a word'} is not in the "
            "tokenizer's vocabulary"
        )


def _continuation_ids(
    tokenizer: Any, prompts: list[str], prompt_ids: list[list[int]], continuations: list[str]
) -> list[int]:
    """The single token each continuation adds to its prompt.

    The continuation is encoded together with its prompt (so BPE merges and leading spaces come
    out as the model sees them) and must add exactly one token after an unchanged prefix.
    """
    full = _encode_texts(tokenizer, [p + c for p, c in zip(prompts, continuations)])
    out = []
    for prompt, ids, cont, full_ids in zip(prompts, prompt_ids, continuations, full):
        if len(full_ids) != len(ids) + 1 or full_ids[: len(ids)] != ids:
            n_extra = len(full_ids) - len(ids)
            raise TaskError(
                f"answer {cont!r} after prompt {prompt!r} is not a single token "
                f"(it encodes to {n_extra} tokens or changes the prompt's last token)"
            )
        if tokenizer.unk_token_id is not None and full_ids[-1] == tokenizer.unk_token_id:
            raise TaskError(f"answer {cont!r} is not in the tokenizer's vocabulary")
        out.append(full_ids[-1])
    return out


def _answer_ids(
    tokenizer: Any, pairs: Sequence[PromptPair], clean_ids: list[list[int]], which: str
) -> list[list[int]]:
    """Token ids of every pair's answers (``which`` = "answers") or wrong answers ("wrongs")."""
    id_field = "answer_ids" if which == "answers" else "wrong_ids"
    jobs = [(i, text) for i, p in enumerate(pairs) for text in getattr(p, which)]
    ids = _continuation_ids(
        tokenizer,
        [pairs[i].clean for i, _ in jobs],
        [clean_ids[i] for i, _ in jobs],
        [text for _, text in jobs],
    )
    out: list[list[int]] = [list(getattr(p, id_field)) for p in pairs]
    for (i, _), token in zip(jobs, ids):
        out[i].append(token)
    vocab = len(tokenizer)
    for p, row in zip(pairs, out):
        if any(not 0 <= t < vocab for t in row):
            raise TaskError(f"prompt {p.clean!r}: answer token id out of range 0..{vocab - 1}")
    return out


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if candidate is not None:
            return candidate
    return 0
