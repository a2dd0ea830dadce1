"""Text to token ids: ``encode_pairs`` tokenizes prompt pairs for one tokenizer and validates
every pair on the way (unknown words, clean/corrupted length, one-token answers), and maps the
named character spans of each clean prompt to its token positions (docs/tasks.md, "Spans")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from acd.errors import TaskError
from acd.tasks.batch import METRIC_NAMES, PromptBatch, PromptPair


def encode_pairs(
    pairs: Sequence[PromptPair],
    tokenizer: Any,
    metric: str,
    span_order: Sequence[str] | None = None,
) -> PromptBatch:
    """Tokenize and validate prompt pairs for one tokenizer.

    Raises TaskError naming the offending text when a word is unknown to the tokenizer, when a
    clean prompt and its corrupted twin differ in token length, or when an answer is not one
    token. The metric reads the last real position of each prompt, or (``score_from_word``)
    every position from that word on that predicts a word of the prompt.

    The batch's spans come from the pairs' ``spans`` (all pairs name spans, or none does: then
    the single span "all"). ``span_order`` gives the canonical order of the span names (the
    task's, so that every batch of a task has the same names); names it lacks follow in the
    order they first appear in the pairs. See ``_token_spans`` for which token is in which span.
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
    span_names, span_index = _span_layout(tokenizer, pairs, clean_ids, span_order, bos_offset)
    return PromptBatch.from_token_ids(
        clean_ids,
        corrupt_ids,
        correct=correct,
        wrong=wrong,
        metric=metric,
        score_mask=_score_mask(pairs, [len(ids) for ids in clean_ids], bos_offset),
        pad_id=_pad_id(tokenizer),
        pairs=pairs,
        span_names=span_names,
        span_index=span_index,
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


# --------------------------------------------------------------------------------------------
# Spans: character ranges of the clean prompts to token positions


def _span_layout(
    tokenizer: Any,
    pairs: Sequence[PromptPair],
    clean_ids: list[list[int]],
    span_order: Sequence[str] | None,
    bos_offset: int,
) -> tuple[tuple[str, ...] | None, torch.Tensor | None]:
    """The P span names and the [N, T] span of every clean position (-1 on padding); (None,
    None) when no pair names spans (from_token_ids then gives the single span "all")."""
    named = [bool(p.spans) for p in pairs]
    if not any(named):
        return None, None
    if not all(named):
        text = pairs[named.index(False)].clean
        raise TaskError(f"prompt {text!r} names no spans but other prompts do; give all or none")
    names = _span_names(pairs, span_order)
    texts = [p.clean for p in pairs]
    offsets = _token_offsets(tokenizer, texts, [ids[bos_offset:] for ids in clean_ids])
    index = torch.full((len(pairs), max(len(ids) for ids in clean_ids)), -1, dtype=torch.long)
    for i, (p, token_offsets) in enumerate(zip(pairs, offsets)):
        row = _token_spans(p, token_offsets, names, bos_offset)
        index[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return names, index


def _span_names(pairs: Sequence[PromptPair], span_order: Sequence[str] | None) -> tuple[str, ...]:
    """``span_order``, then the pairs' other span names in the order they first appear."""
    names = dict.fromkeys(span_order or ())
    for p in pairs:
        for name, _, _ in p.spans:
            names.setdefault(name)
    return tuple(names)


def _token_spans(
    pair: PromptPair, offsets: list[tuple[int, int]], names: tuple[str, ...], bos_offset: int
) -> list[int]:
    """The span index of each token of ``pair.clean`` (BOS first where there is one).

    A token is in the span whose range holds the token's last non-whitespace character (so
    " Mary" is in the span of "Mary", and "17" "32" of "1732" can fall in two spans). A token
    no range covers (BOS, a whitespace-only token, text outside every range) is in the span of
    the nearest token before it that is covered, or in the first span of ``names`` when none
    is. A span named END holds the last token, whatever range that token is in: END is the
    final position.
    """
    char_span = _char_spans(pair, names)
    row = [-1] * bos_offset + [_covering_span(pair.clean, char_span, s, e) for s, e in offsets]
    current = 0  # the first span, for the tokens before the first covered one
    for j, span in enumerate(row):
        if span < 0:
            row[j] = current
        else:
            current = span
    if "END" in names:
        row[-1] = names.index("END")
    return row


def _char_spans(pair: PromptPair, names: tuple[str, ...]) -> list[int]:
    """The span index of each character of ``pair.clean``, -1 where no range covers it; a
    range outside the text or two ranges over one character are a TaskError."""
    text = pair.clean
    char_span = [-1] * len(text)
    for name, start, end in pair.spans:
        if not 0 <= start <= end <= len(text):
            raise TaskError(
                f"prompt {text!r}: span {name!r} range [{start}, {end}) is outside the text "
                f"(0..{len(text)})"
            )
        span = names.index(name)
        for c in range(start, end):
            if char_span[c] >= 0:
                raise TaskError(
                    f"prompt {text!r}: spans {names[char_span[c]]!r} and {name!r} overlap at "
                    f"character {c}"
                )
            char_span[c] = span
    return char_span


def _covering_span(text: str, char_span: list[int], start: int, end: int) -> int:
    """The span of the last non-whitespace character of text[start:end], -1 if none."""
    for c in range(min(end, len(text)) - 1, start - 1, -1):
        if not text[c].isspace():
            return char_span[c]
    return -1


def _token_offsets(
    tokenizer: Any, texts: Sequence[str], ids: list[list[int]]
) -> list[list[tuple[int, int]]]:
    """The character range (start, end) of each token of each text (``ids``: without BOS).

    The Rust tokenizer reports them; for any other tokenizer they are found by encoding
    prefixes of the text (slow, but right for any tokenizer that encodes a prefix ending at a
    token boundary to the same leading tokens).
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encoded = backend.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.offsets) for e in encoded]
    return [_offsets_by_prefixes(tokenizer, text, row) for text, row in zip(texts, ids)]


def _offsets_by_prefixes(tokenizer: Any, text: str, ids: list[int]) -> list[tuple[int, int]]:
    """Token j ends where the shortest prefix of ``text`` encoding to ids[:j+1] (and maybe
    more) ends; it starts where token j-1 ends, so it may include the whitespace before it."""

    def prefix_ids(end: int) -> list[int]:
        try:
            return list(tokenizer(text[:end], add_special_tokens=False)["input_ids"])
        except Exception:  # a tokenizer may refuse part of a word: no token ends there
            return []

    offsets = []
    start = 0
    for j in range(len(ids)):
        end = min(start + 1, len(text))
        while end < len(text) and prefix_ids(end)[: j + 1] != ids[: j + 1]:
            end += 1
        offsets.append((start, end))
        start = end
    return offsets


# --------------------------------------------------------------------------------------------
# Token ids


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
