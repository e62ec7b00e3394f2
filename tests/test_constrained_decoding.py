"""Decoding never yields an invalid, repeated or prompt item, and always exactly K."""

from __future__ import annotations

import random

import pytest
import torch

from learner.backbone import build_policy
from learner.constrained_decoding import generate_pages, left_pad, page_logprobs, position_ids
from learner.settings import BackboneSettings
from learner.vocabulary import build_vocabulary

torch.set_num_threads(1)
ITEMS = [f"i{i}" for i in range(40)]
USERS = [f"u{i}" for i in range(30)]


def setup():
    vocab = build_vocabulary(USERS, ITEMS, ["a", "b"])
    model = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=1, n_head=2), seed=1).eval()
    rng = random.Random(0)
    requests = [(u, rng.sample(ITEMS, rng.randint(0, 25))) for u in USERS]
    return vocab, model, requests


def test_pages_are_k_distinct_catalogue_items_outside_the_prompt() -> None:
    vocab, model, requests = setup()
    for greedy in (False, True):
        for seed in range(5):
            out = generate_pages(model, vocab, requests, k=10, greedy=greedy,
                                 generator=torch.Generator().manual_seed(seed))  # fmt: skip
            for (_, history), page in zip(requests, out.pages, strict=True):
                assert len(page) == 10 and len(set(page)) == 10
                assert set(page) <= set(ITEMS) and not set(page) & set(history)
            assert out.input_ids[:, -1].eq(vocab.tokenizer.eos_token_id).all()
            assert torch.isfinite(out.token_logprobs).all() and (out.token_logprobs <= 0).all()


def test_a_history_that_leaves_exactly_k_items_yields_those() -> None:
    vocab, model, _ = setup()
    out = generate_pages(model, vocab, [("u1", ITEMS[:30])], k=10)
    assert sorted(out.pages[0]) == sorted(ITEMS[30:])


def test_items_banned_beside_the_prompt_never_appear() -> None:
    vocab, model, requests = setup()
    also = [random.Random(n).sample(ITEMS, 5) for n in range(len(requests))]
    for seed in range(5):
        out = generate_pages(model, vocab, requests, k=10, also_banned=also,
                             generator=torch.Generator().manual_seed(seed))  # fmt: skip
        for (_, history), more, page in zip(requests, also, out.pages, strict=True):
            assert len(set(page)) == 10 and not set(page) & (set(history) | set(more))


def test_bans_that_leave_fewer_than_k_items_are_refused_by_name() -> None:
    vocab, model, _ = setup()
    with pytest.raises(ValueError, match=r"requests\[1\] \(user 'u2'\): only 9 items are left"):
        generate_pages(model, vocab, [("u1", ITEMS[:5]), ("u2", ITEMS[:20])], k=10,
                       also_banned=[[], ITEMS[20:31]])  # fmt: skip


def test_logprobs_match_a_full_forward_pass_under_the_mask() -> None:
    vocab, model, requests = setup()
    out = generate_pages(
        model, vocab, requests[:6], k=5, generator=torch.Generator().manual_seed(2)
    )
    logits = model(
        input_ids=out.input_ids, attention_mask=out.attention_mask,
        position_ids=position_ids(out.attention_mask),
    ).logits  # fmt: skip
    step_logits = logits[:, out.prompt_length - 1 : -1, :]
    item_ids = torch.tensor(vocab.item_ids)
    again = page_logprobs(step_logits, out.page_ids, out.bans, item_ids, 5,
                          vocab.tokenizer.eos_token_id)  # fmt: skip
    # The cached, incremental pass and one full pass give the same masked log-probabilities.
    assert torch.allclose(again, out.token_logprobs, atol=1e-4)
    assert again[:, -1].abs().max() < 1e-6  # after K items EOS is certain
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
