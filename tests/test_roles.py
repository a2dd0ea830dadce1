"""Head-role scores on attention patterns whose roles are known by construction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from acd.roles import head_roles, ioi_final_attention, scores_on_repeats
from acd.tasks import PromptPair, encode_pairs


def _planted_patterns(tokens: torch.Tensor) -> torch.Tensor:
    """Two layers, two heads: a0.h0 attends to the previous token, a0.h1 to BOS, a1.h0 to the
    token after the earlier copy of the current token (induction), a1.h1 to that copy itself
    (duplicate). Heads fall back to BOS where their target does not exist. [N, 2, 2, T, T]."""
    n, t = tokens.shape
    patterns = torch.zeros(n, 2, 2, t, t)
    for b in range(n):
        for q in range(t):
            earlier = [k for k in range(q) if tokens[b, k] == tokens[b, q]]
            targets = {
                (0, 0): q - 1 if q >= 1 else 0,
                (0, 1): 0,
                (1, 0): earlier[-1] + 1 if earlier else 0,
                (1, 1): earlier[-1] if earlier else 0,
            }
            for (layer, head), k in targets.items():
                patterns[b, layer, head, q, k] = 1.0
    return patterns


def test_planted_heads_get_their_roles_and_nothing_else():
    roles = head_roles(_planted_patterns, range(10, 60), bos=0, n_prompts=8)
    assert roles.previous_token[0, 0] == 1.0
    assert roles.induction[1, 0] == 1.0 and roles.duplicate_token[1, 1] == 1.0
    assert roles.with_role("previous_token") == ["a0.h0"]
    assert roles.with_role("induction") == ["a1.h0"]
    assert roles.with_role("duplicate_token") == ["a1.h1"]
    # The BOS head has no role; the induction head is not a previous-token head.
    assert roles.previous_token[0, 1] < 0.2 and roles.previous_token[1, 0] < 0.2


def test_repeat_scores_by_hand_on_one_sequence():
    # [BOS] x y z x y z; a uniform pattern over keys 0..q gives A[q, k] = 1 / (q + 1).
    t = 7
    uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1).unsqueeze(1)
    roles = scores_on_repeats(uniform.expand(1, 1, 1, t, t), half=3, offset=1)
    prev = sum(1 / (q + 1) for q in range(1, t)) / (t - 1)
    dup = sum(1 / (q + 1) for q in (4, 5, 6)) / 3
    ind = sum(1 / (q + 1) for q in (4, 5)) / 2
    assert torch.allclose(roles.previous_token, torch.tensor([[prev]]))
    assert torch.allclose(roles.duplicate_token, torch.tensor([[dup]]))
    assert torch.allclose(roles.induction, torch.tensor([[ind]]))


class _WordTokenizer:
    bos_token_id, eos_token_id, unk_token_id, pad_token_id = 0, 0, None, 0
    vocab = ["<bos>", "When", "Mary", "John", "went", "gave", "it", "to"]
    backend_tokenizer = None

    def __call__(self, texts, add_special_tokens=False):
        texts = [texts] if isinstance(texts, str) else texts
        return {"input_ids": [[self.vocab.index(w) for w in t.split()] for t in texts]}

    def __len__(self):
        return len(self.vocab)


def test_ioi_final_attention_finds_io_and_both_subjects():
    pair = PromptPair(
        clean="When Mary John went John gave it to",
        corrupted="When John Mary went Mary gave it to",
        answers=(" Mary",),
        wrongs=(" John",),
    )
    batch = encode_pairs([pair], _WordTokenizer(), "logit_diff")
    t = batch.clean.shape[1]  # BOS + 8 words; IO (Mary) at 2, S (John) at 3 and 5, END at 8
    patterns = torch.zeros(1, 1, 2, t, t)
    patterns[0, 0, 0, -1, 2] = 0.7  # head 0: a name mover, mostly IO
    patterns[0, 0, 0, -1, 0] = 0.3
    patterns[0, 0, 1, -1, 3] = 0.4  # head 1: both subject positions
    patterns[0, 0, 1, -1, 5] = 0.5
    patterns[0, 0, 1, -1, 0] = 0.1
    to_io, to_s = ioi_final_attention(lambda tokens: patterns, batch)
    assert torch.allclose(to_io, torch.tensor([[0.7, 0.0]]))
    assert torch.allclose(to_s, torch.tensor([[0.0, 0.9]]))


def _rule_model(vocab_size: int, rule: str):
    """logits [N, T, V] of a hand-written copying rule at every position: ``current`` puts all
    mass on the word after the latest earlier copy of the current word (textbook induction);
    ``previous`` on the word two after the latest earlier copy of the previous word."""

    def run(tokens: torch.Tensor) -> torch.Tensor:
        n, t = tokens.shape
        logits = torch.zeros(n, t, vocab_size)
        for row in range(n):
            seq = tokens[row].tolist()
            for pos in range(1, t):
                key, shift = (seq[pos], 1) if rule == "current" else (seq[pos - 1], 2)
                back = pos if rule == "current" else pos - 1
                earlier = [m for m in range(back) if seq[m] == key and m + shift <= pos]
                if earlier:
                    logits[row, pos, seq[earlier[-1] + shift]] = 50.0
        return logits

    return run


def test_copy_probes_tell_the_textbook_rule_from_the_previous_word_rule():
    from acd.models.quality import copy_rule_figures
    from acd.models.train_toy import TASK_NAMES, build_tokenizer, task_vocabulary
    from acd.tasks import load_task

    toy_tokenizer = build_tokenizer(task_vocabulary([load_task(n) for n in TASK_NAMES]))
    vocab = len(toy_tokenizer)
    textbook = copy_rule_figures(_rule_model(vocab, "current"), toy_tokenizer, 30, seed=0)
    lookalike = copy_rule_figures(_rule_model(vocab, "previous"), toy_tokenizer, 30, seed=0)
    assert [f.value > 0.99 for f in textbook] == [True, False]
    assert [f.value > 0.99 for f in lookalike] == [False, True]
    assert max(textbook[1].value, lookalike[0].value) < 0.01


# --------------------------------------------------------------------------------------------
# Final-position attention per template variable, copying, badges


def _name_task():
    from acd.tasks.kinds import TemplateTask

    return TemplateTask(
        name="names",
        kind="template",
        metric="logit_diff",
        description="",
        source="",
        lists={"names": ["Mary", "John"]},
        variables={"IO": "names", "S": "names"},
        distinct=[["IO", "S"]],
        templates=[("When {IO} {S} went {S} gave it to", "When {S} {IO} went {IO} gave it to")],
        answer=[" {IO}"],
        wrong=[" {S}"],
    )


def test_final_attention_by_variable_finds_each_occurrence():
    from acd.roles import final_attention_by_variable

    task, tokenizer = _name_task(), _WordTokenizer()
    pairs = task.prompt_pairs_with_values(4, seed=0)
    assert [pair for pair, _ in pairs] == task.prompt_pairs(4, seed=0)
    assert {values["IO"] for _, values in pairs} | {values["S"] for _, values in pairs} <= {
        "Mary",
        "John",
    }
    # BOS + "When IO S went S gave it to": IO at 2, S at 3 and 5, END at 8
    t = 9

    def patterns(tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(tokens), 1, 2, t, t)
        out[:, 0, 0, -1, 2] = 0.75  # head 0: the IO slot
        out[:, 0, 0, -1, 0] = 0.25
        out[:, 0, 1, -1, 3] = 0.2  # head 1: the two subject slots
        out[:, 0, 1, -1, 5] = 0.8
        return out

    scores = final_attention_by_variable(patterns, task, tokenizer, n_prompts=4, seed=0)
    assert set(scores) == {"IO", "S1", "S2"}
    assert torch.allclose(scores["IO"], torch.tensor([[0.75, 0.0]]))
    assert torch.allclose(scores["S1"], torch.tensor([[0.0, 0.2]]))
    assert torch.allclose(scores["S2"], torch.tensor([[0.0, 0.8]]))


def test_copy_share_by_hand():
    from acd.roles import copy_share

    tokens = torch.tensor([[0, 11, 12, 13]])  # BOS then three tokens
    patterns = torch.zeros(1, 4, 4)
    patterns[0, 1, 1] = 1.0  # q=1 reads token 11
    patterns[0, 2, 0], patterns[0, 2, 1], patterns[0, 2, 2] = 0.5, 0.25, 0.25  # 11 and 12
    patterns[0, 3, 0], patterns[0, 3, 3] = 0.95, 0.05  # q=3 reads BOS almost only: skipped
    raised = torch.tensor([[[0, 1], [11, 99], [12, 98], [13, 97]]])  # top-2 raised per q
    # q=0 reads only BOS: skipped; q=1: all on 11, raised -> 1; q=2: 12 of {11, 12} -> 0.5
    assert copy_share(patterns, raised, tokens) == pytest.approx((1.0 + 0.5) / 2)
    assert copy_share(patterns, torch.full_like(raised, 5), tokens) == 0.0


def test_copying_scores_match_a_hand_hook_on_a_real_model(tiny_gpt2_dir):
    """The direct effect through hand hooks (the final residual minus the head's output, in a
    full forward) and the attended tokens counted in plain loops."""
    import acd
    from acd.roles import COPY_HALF_LENGTH, COPY_TOP_K, copying_scores, repeated_random_tokens

    model = acd.load_model(tiny_gpt2_dir, device="cpu", dtype=torch.float64)
    vocab = list(range(1, 60))
    got = copying_scores(model, vocab, n_prompts=3, seed=0)
    tokens = repeated_random_tokens(vocab, 3, COPY_HALF_LENGTH, 0, bos=0)
    store = {}

    def keep(tensor, hook):
        store[hook.name] = tensor.detach().clone()

    hooks = [(model.hook_head_result(0), keep), (model.hook_head_result(1), keep)]
    hooks += [(model.hook_attn_pattern(0), keep), (model.hook_attn_pattern(1), keep)]
    with torch.no_grad():
        full = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    for layer in range(2):
        for head in range(4):
            z = store[model.hook_head_result(layer)][:, :, head]

            def minus(x, hook, z=z):
                return x - z

            with torch.no_grad():
                without = model.bridge.run_with_hooks(
                    tokens, fwd_hooks=[(model.hook_final_resid(), minus)]
                )
            raised = (full - without).topk(COPY_TOP_K, dim=-1).indices
            pattern = store[model.hook_attn_pattern(layer)][:, head]
            shares = []
            for b in range(len(tokens)):
                for q in range(tokens.shape[1]):
                    reads = float(pattern[b, q, 1:].sum())
                    if reads < 0.1:
                        continue
                    hit = sum(
                        float(pattern[b, q, k])
                        for k in range(1, tokens.shape[1])
                        if int(tokens[b, k]) in raised[b, q].tolist()
                    )
                    shares.append(hit / reads)
            expected = sum(shares) / len(shares)
            assert float(got[layer, head]) == pytest.approx(expected, abs=1e-6)


def test_badges_follow_the_threshold():
    from acd.roles import role_badges

    scores = {"previous_token": 0.8, "duplicate_token": 0.49, "induction": 0.5, "copying": 0.1}
    assert role_badges(scores) == ["prev", "ind"]
    assert role_badges({**scores, "end_to_IO": 0.7, "end_to_S2": 0.2}) == ["prev", "ind", "END→IO"]
    assert role_badges(scores, threshold=0.9) == []


def test_discover_stores_role_scores_on_the_heads(tmp_path):
    import acd
    from acd.export.circuit_json import load_circuit
    from acd.roles import head_role_scores

    model = acd.load_model("toy")
    circuit = acd.discover("ioi", model, prompts=8, run=acd.RunConfig(progress=False, trust=False))
    expected = head_role_scores(model, acd.load_task("ioi"))
    assert set(circuit.node_roles) == {f"a{layer}.h{h}" for layer in range(4) for h in range(4)}
    for name, scores in expected.items():
        assert circuit.node_roles[name] == pytest.approx(scores)
    assert "end_to_IO" in circuit.node_roles["a0.h0"]
    circuit.save(tmp_path)
    loaded = load_circuit(tmp_path / "circuit.json").node_roles
    assert set(loaded) == set(circuit.node_roles)
    for name, scores in circuit.node_roles.items():
        assert loaded[name] == pytest.approx(scores)
    G = circuit.to_networkx()
    head = next(n for n in G.nodes if G.nodes[n]["kind"] == "head")
    assert G.nodes[head]["role_induction"] == pytest.approx(circuit.node_roles[head]["induction"])
    skipped = acd.discover(
        "ioi", model, prompts=8, run=acd.RunConfig(progress=False, trust=False, roles=False)
    )
    assert skipped.node_roles == {}


def test_check_model_names_the_head_leaning_to_io_not_the_one_attending_most_to_it():
    """``role_figures``' IOI figure on planted patterns: head 0 copies both names (IO 0.55, S
    0.45), head 1 is a weak name mover (IO 0.5, S 0.1): the figure names head 1, which attends
    less to IO but leans to it over S."""
    from transformers import AutoTokenizer

    from acd.models import embedded_models_dir
    from acd.models.quality import role_figures

    tokenizer = AutoTokenizer.from_pretrained(embedded_models_dir() / "toy")
    names = {
        tokenizer.convert_tokens_to_ids(tokenizer.tokenize(" " + line.strip())[0])
        for line in (Path(__file__).parents[1] / "tasks" / "names.txt").read_text().splitlines()
        if line.strip()
    }

    def patterns(tokens: torch.Tensor) -> torch.Tensor:
        n, t = tokens.shape
        out = torch.zeros(n, 1, 2, t, t)
        out[:, :, :, :, 0] = 1.0  # every query on BOS unless planted below
        for b in range(n):
            row = tokens[b].tolist()
            slots = [k for k, tok in enumerate(row) if tok in names]
            once = [k for k in slots if row.count(row[k]) == 1]
            twice = [k for k in slots if row.count(row[k]) == 2]
            if len(once) != 1 or len(twice) != 2:
                continue  # not an IOI prompt (the role scores' random sequences)
            (io,), (s1, s2) = once, twice
            end = max(k for k, tok in enumerate(row) if tok != tokenizer.pad_token_id)
            out[b, 0, :, end] = 0.0
            out[b, 0, 0, end, io], out[b, 0, 0, end, s1], out[b, 0, 0, end, s2] = 0.55, 0.3, 0.15
            out[b, 0, 1, end, io], out[b, 0, 1, end, s1], out[b, 0, 1, end, 0] = 0.5, 0.1, 0.4
        return out

    figures, table = role_figures(patterns, tokenizer, 20, seed=1)
    (mover,) = [f for f in figures if f.name.startswith("ioi END attention to IO")]
    assert "(a0.h1; to S 0.100)" in mover.name and mover.value == pytest.approx(0.5)
    assert "a0.h1" in table
