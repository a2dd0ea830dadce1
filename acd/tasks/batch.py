"""Prompt pairs as text (``PromptPair``) and as validated token ids (``PromptBatch``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from acd.errors import TaskError

METRIC_NAMES = ("logit_diff", "prob_diff", "logprob", "kl", "l2")

# A positional node is named node@span, and GraphML stores a circuit's span names joined by
# commas, so neither character may occur in a span name (both would be read back wrong).
SPAN_NAME_RESERVED = ",@"
SPAN_NAME_RULE = "a span name may not contain ',' or '@' (positional nodes are named node@span)"

# The span names of a batch whose prompts name no spans: every real position is in "all".
DEFAULT_SPAN_NAMES = ("all",)

# Token ids of N prompts: an [N, T] tensor, or N lists of ids (ragged; right-padded here).
TokenRows = torch.Tensor | Sequence[Sequence[int]]


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted prompt pair, as text.

    ``answers`` and ``wrongs`` are continuations of the clean prompt (with their leading space
    where the tokenizer needs one, e.g. " Mary"); each must encode to exactly one token.
    ``answer_ids``/``wrong_ids`` give the answers as token ids instead (EAP-IG's CSV columns).
    ``score_from_word`` marks, for induction, the first word of the part whose next-word
    log-probabilities the metric averages.
    ``spans`` names character ranges ``(name, start, end)`` (end exclusive) of the clean text;
    a name may have several ranges, and a range may be empty (it still names the span). The
    corrupted prompt has the same token layout, so it needs none (docs/tasks.md, "Spans").
    """

    clean: str
    corrupted: str
    answers: tuple[str, ...] = ()
    wrongs: tuple[str, ...] = ()
    answer_ids: tuple[int, ...] = ()
    wrong_ids: tuple[int, ...] = ()
    score_from_word: int | None = None
    spans: tuple[tuple[str, int, int], ...] = ()


def _unset_span_index() -> torch.Tensor:
    """PromptBatch's default span_index, an empty tensor that __post_init__ replaces."""
    return torch.empty(0, 0, dtype=torch.long)


@dataclass
class PromptBatch:
    """Token ids of N prompt pairs for one tokenizer, right-padded to a common length T.

    Shapes:
        clean, corrupted: [N, T] token ids; position 0 is the BOS token where the tokenizer
            has one; positions >= lengths[i] are padding (causal attention keeps them from
            affecting earlier positions, and no metric reads them).
        lengths: [N] number of real tokens per prompt.
        score_mask: [N, T] bool, the positions whose logits the metric reads.
        targets: [N, T] the token each scored position should predict (``logprob``); 0 elsewhere.
        correct, wrong: [N, K] answer token ids, padded; correct_mask, wrong_mask: [N, K] bool.
        span_index: [N, T] long, the index into ``span_names`` (P names) of the span of every
            real position, -1 on padding. Left out, it puts every real position in span 0
            (``span_names`` defaults to the single span "all").
    """

    clean: torch.Tensor
    corrupted: torch.Tensor
    lengths: torch.Tensor
    score_mask: torch.Tensor
    targets: torch.Tensor
    correct: torch.Tensor
    correct_mask: torch.Tensor
    wrong: torch.Tensor
    wrong_mask: torch.Tensor
    metric: str
    pairs: list[PromptPair] = field(default_factory=list)
    span_names: tuple[str, ...] = DEFAULT_SPAN_NAMES
    span_index: torch.Tensor = field(default_factory=_unset_span_index)

    def __post_init__(self) -> None:
        # A real batch has N >= 1 prompts of T >= 1 positions, so an empty span_index can only
        # be the default: every real position in span 0.
        if self.span_index.numel() == 0 and self.clean.numel() > 0:
            self.span_index = single_span_index(self.lengths, self.clean.shape[1])

    @classmethod
    def from_token_ids(
        cls,
        clean: TokenRows,
        corrupted: TokenRows,
        *,
        correct: TokenRows,
        wrong: TokenRows | None = None,
        metric: str,
        score_mask: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        lengths: torch.Tensor | Sequence[int] | None = None,
        pad_id: int = 0,
        pairs: Sequence[PromptPair] = (),
        span_names: Sequence[str] | None = None,
        span_index: torch.Tensor | None = None,
    ) -> PromptBatch:
        """A validated batch from token ids, with the defaults a task's encoder fills.

        Args:
            clean, corrupted: [N, T] token ids, or N lists of ids (right-padded with ``pad_id``
                to the longest; row i of both must have the same length).
            correct, wrong: [N, K] answer ids (every entry an answer), or N lists of ids of
                any length (padded with 0, the masks mark the real ones); ``wrong`` None: no
                wrong answers.
            metric: one of METRIC_NAMES.
            score_mask: [N, T] bool; default: each prompt's last real token.
            targets: [N, T]; default: the next clean token at each scored position whose next
                position is a real token, 0 elsewhere.
            lengths: [N]; default: each list's length, or T for a tensor.
            pairs: the N prompt pairs as text, where there are any.
            span_names, span_index: the P span names and the [N, T] span of every position
                (-1 exactly on padding), both or neither; default: the single span "all".

        Raises TaskError, one line, when a shape or a value does not fit.
        """
        if metric not in METRIC_NAMES:
            raise TaskError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}")
        clean_ids, corrupt_ids, lengths = _prompts(clean, corrupted, lengths, pad_id)
        n, device = len(clean_ids), clean_ids.device
        score_mask, targets = _scoring(clean_ids, lengths, score_mask, targets)
        if pairs and len(pairs) != n:
            raise TaskError(f"{len(pairs)} prompt pairs given for {n} prompts")
        correct_ids, correct_mask = _answer_ids(correct, n, "correct", device)
        wrong_ids, wrong_mask = _answer_ids(
            [[]] * n if wrong is None else wrong, n, "wrong", device
        )
        names, spans = _spans(span_names, span_index, lengths, clean_ids.shape[1])
        return cls(
            clean=clean_ids,
            corrupted=corrupt_ids,
            lengths=lengths,
            score_mask=score_mask,
            targets=targets,
            correct=correct_ids,
            correct_mask=correct_mask,
            wrong=wrong_ids,
            wrong_mask=wrong_mask,
            metric=metric,
            pairs=list(pairs),
            span_names=names,
            span_index=spans,
        )

    def __len__(self) -> int:
        return self.clean.shape[0]

    def select(self, index: torch.Tensor | slice | Sequence[int]) -> PromptBatch:
        """The sub-batch of the given prompts (same padding width)."""
        if isinstance(index, slice):
            pairs = self.pairs[index]
        else:
            index = torch.as_tensor(index, dtype=torch.long)
            pairs = [self.pairs[i] for i in index.tolist()] if self.pairs else []
        return replace(
            self,
            **{name: getattr(self, name)[index] for name in BATCH_TENSOR_FIELDS},
            pairs=pairs,
        )

    def span_positions(self, name: str) -> torch.Tensor:
        """[N, T] bool: the positions of the span ``name`` (none of the padding)."""
        if name not in self.span_names:
            raise TaskError(f"unknown span {name!r}; the spans are {', '.join(self.span_names)}")
        return self.span_index == self.span_names.index(name)

    def split(self, batch_size: int) -> list[PromptBatch]:
        """Consecutive sub-batches of at most ``batch_size`` prompts."""
        if batch_size < 1:
            raise TaskError(f"batch size must be at least 1, got {batch_size}")
        return [self.select(slice(i, i + batch_size)) for i in range(0, len(self), batch_size)]

    def to(self, device: torch.device | str) -> PromptBatch:
        return replace(
            self, **{name: getattr(self, name).to(device) for name in BATCH_TENSOR_FIELDS}
        )


BATCH_TENSOR_FIELDS = (
    "clean",
    "corrupted",
    "lengths",
    "score_mask",
    "targets",
    "correct",
    "correct_mask",
    "wrong",
    "wrong_mask",
    "span_index",
)


def single_span_index(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[N, width] long: 0 on each prompt's real positions (the one span), -1 on padding."""
    real = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
    return torch.where(real, 0, -1)


def pad_rows(rows: Sequence[Sequence[int]], width: int, value: int) -> torch.Tensor:
    """[len(rows), width] long tensor of the rows, each right-padded with ``value``."""
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


# --------------------------------------------------------------------------------------------
# from_token_ids' checks: each problem is one TaskError line


def _prompts(
    clean: TokenRows,
    corrupted: TokenRows,
    lengths: torch.Tensor | Sequence[int] | None,
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The [N, T] clean and corrupted ids and the [N] lengths, checked to fit each other."""
    clean_ids, clean_lengths = _prompt_ids(clean, pad_id, "clean")
    corrupt_ids, corrupt_lengths = _prompt_ids(corrupted, pad_id, "corrupted")
    if corrupt_ids.shape != clean_ids.shape or corrupt_lengths != clean_lengths:
        raise TaskError(
            f"corrupted token ids {_rows_shape(corrupted)} do not match the clean ones "
            f"{_rows_shape(clean)}; each pair needs the same length"
        )
    n, width = clean_ids.shape
    return clean_ids, corrupt_ids, _lengths(lengths, clean_lengths, n, width, clean_ids.device)


def _scoring(
    clean: torch.Tensor,
    lengths: torch.Tensor,
    score_mask: torch.Tensor | None,
    targets: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The [N, T] score mask (default: the last real token) and targets (default: the next
    real token at each scored position), checked against the prompts."""
    n, width = clean.shape
    if score_mask is None:
        score_mask = torch.arange(width, device=clean.device)[None, :] == lengths[:, None] - 1
    _check_score_mask(score_mask, lengths, n, width)
    if targets is None:
        targets = _next_token_targets(clean, lengths, score_mask)
    _check_shape(targets, (n, width), "targets")
    _check_integer(targets, "targets")
    return score_mask, targets


def _spans(
    names: Sequence[str] | None,
    index: torch.Tensor | None,
    lengths: torch.Tensor,
    width: int,
) -> tuple[tuple[str, ...], torch.Tensor]:
    """The P span names and the [N, T] span index, checked; default: the single span "all"."""
    if names is None and index is None:
        return DEFAULT_SPAN_NAMES, single_span_index(lengths, width)
    if names is None or index is None:
        raise TaskError("give span_names and span_index together, or neither")
    names = tuple(names)
    if not names or any(not isinstance(s, str) or not s for s in names):
        raise TaskError(f"span_names must be non-empty strings, at least one, got {list(names)}")
    if len(set(names)) != len(names):
        raise TaskError(f"span_names must be distinct, got {list(names)}")
    reserved = [s for s in names if any(c in s for c in SPAN_NAME_RESERVED)]
    if reserved:
        raise TaskError(f"span names {reserved}: {SPAN_NAME_RULE}")
    _check_shape(index, (len(lengths), width), "span_index")
    _check_integer(index, "span_index")
    index = index.long().to(lengths.device)
    if int(index.min()) < -1 or int(index.max()) >= len(names):
        raise TaskError(
            f"span_index values must lie in -1..{len(names) - 1}, got "
            f"{int(index.min())}..{int(index.max())}"
        )
    padding = single_span_index(lengths, width) < 0
    misplaced = ((index < 0) != padding).any(dim=1).nonzero()
    if len(misplaced):
        i = int(misplaced[0])
        raise TaskError(
            f"span_index of prompt {i} must be -1 exactly on its padding (positions >= "
            f"{int(lengths[i])})"
        )
    return names, index


def _rows_shape(rows: TokenRows) -> str:
    """How a TokenRows argument is shaped, for an error message."""
    if isinstance(rows, torch.Tensor):
        return f"of shape {tuple(rows.shape)}"
    return f"of lengths {[len(r) for r in rows]}"


def _prompt_ids(rows: TokenRows, pad_id: int, name: str) -> tuple[torch.Tensor, list[int] | None]:
    """The [N, T] long ids of ``rows`` and, for lists, each row's length (None for a tensor)."""
    if isinstance(rows, torch.Tensor):
        if rows.dim() != 2 or rows.numel() == 0:
            raise TaskError(
                f"{name} token ids must be a non-empty [N, T] tensor, got shape {tuple(rows.shape)}"
            )
        _check_integer(rows, f"{name} token ids")
        return rows.long(), None
    row_lengths = [len(r) for r in rows]
    if not row_lengths or min(row_lengths) == 0:
        raise TaskError(f"{name} token ids need at least one prompt of at least one token")
    ids = pad_rows(rows, max(row_lengths), pad_id)
    return ids, row_lengths


def _check_integer(tensor: torch.Tensor, what: str) -> None:
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TaskError(f"{what} must be integers, got {tensor.dtype}")


def _lengths(
    given: torch.Tensor | Sequence[int] | None,
    row_lengths: list[int] | None,
    n: int,
    width: int,
    device: torch.device,
) -> torch.Tensor:
    """[N] real-token counts: the given ones (checked), the rows' lengths, or the full width."""
    if given is None:
        if row_lengths is None:
            return torch.full((n,), width, dtype=torch.long, device=device)
        return torch.tensor(row_lengths, dtype=torch.long, device=device)
    lengths = torch.as_tensor(given, dtype=torch.long, device=device)
    if lengths.shape != (n,):
        raise TaskError(f"lengths must have shape ({n},), got {tuple(lengths.shape)}")
    if int(lengths.min()) < 1 or int(lengths.max()) > width:
        raise TaskError(f"lengths must lie in 1..{width} (the width), got {lengths.tolist()}")
    return lengths


def _check_shape(tensor: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(tensor.shape) != shape:
        raise TaskError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")


def _check_score_mask(score_mask: torch.Tensor, lengths: torch.Tensor, n: int, width: int) -> None:
    """A bool [N, T] mask scoring at least one position of each prompt, none of its padding."""
    _check_shape(score_mask, (n, width), "score_mask")
    if score_mask.dtype != torch.bool:
        raise TaskError(f"score_mask must be a bool tensor, got {score_mask.dtype}")
    padding = torch.arange(width, device=score_mask.device)[None, :] >= lengths[:, None]
    bad = (score_mask & padding).any(dim=1).nonzero()
    if len(bad):
        i = int(bad[0])
        raise TaskError(f"score_mask marks padding of prompt {i} (length {int(lengths[i])})")
    empty = (~score_mask.any(dim=1)).nonzero()
    if len(empty):
        raise TaskError(f"score_mask scores no position of prompt {int(empty[0])}")


def _next_token_targets(
    clean: torch.Tensor, lengths: torch.Tensor, score_mask: torch.Tensor
) -> torch.Tensor:
    """[N, T]: the clean token after each scored position, where that token is real; else 0."""
    width = clean.shape[1]
    following = torch.zeros_like(clean)
    following[:, :-1] = clean[:, 1:]
    next_is_real = torch.arange(width, device=clean.device)[None, :] + 1 < lengths[:, None]
    return torch.where(score_mask & next_is_real, following, torch.zeros_like(clean))


def _answer_ids(
    answers: TokenRows, n: int, name: str, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, K] answer ids and their [N, K] bool mask; lists are padded with 0 to K >= 1."""
    if isinstance(answers, torch.Tensor):
        if answers.dim() != 2 or answers.shape[0] != n:
            raise TaskError(
                f"{name} answer ids must be an [N, K] tensor with N = {n}, got shape "
                f"{tuple(answers.shape)}"
            )
        _check_integer(answers, f"{name} answer ids")
        ids = answers.long()
        mask = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    else:
        if len(answers) != n:
            raise TaskError(f"{name} answer ids: {len(answers)} lists given for {n} prompts")
        k = max(1, max(len(r) for r in answers))
        ids = pad_rows(answers, k, 0).to(device)
        mask = pad_rows([[1] * len(r) for r in answers], k, 0).bool().to(device)
    if int(ids.min()) < 0:
        raise TaskError(f"{name} answer ids must be non-negative, got {int(ids.min())}")
    return ids, mask
