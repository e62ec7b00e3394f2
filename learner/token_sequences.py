"""The supervised stages' examples as token ids, and batches of them.

Each example says from which position on its tokens are predicted: a golden-list example
predicts only the page (L_ft = -log p(sigma_gt | q_u)), an item or category meta prompt
predicts everything after [BOS], and an interaction-sequence window predicts the next page of
the user's positives from the ones before. A rating example is a (user, item) pair for the
rating head.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from learner.page_prompts import page_tokens, prompt_tokens
from learner.vocabulary import (
    BOS,
    CATEGORY_OF,
    EOS,
    RATED,
    Vocabulary,
    category_token,
    item_token,
    user_token,
)

IGNORE = -100  # the label torch's cross-entropy skips
CO_OCCURRENCE_CHUNK = 8


@dataclass(frozen=True)
class TokenExample:
    ids: tuple[int, ...]
    loss_from: int  # positions >= loss_from are predicted from the ones before
    page_items: int = 0  # a page example: its items are ids[loss_from : loss_from + page_items]


@dataclass(frozen=True)
class RatingExample:
    ids: tuple[int, ...]  # [BOS] user [RATED] item
    rating: float


def golden_example(vocab: Vocabulary, user: str, history: Sequence[str], golden: Sequence[str]):
    """q_u followed by the golden page; only the page (and its [EOS]) is predicted."""
    prompt = vocab.encode(prompt_tokens(user, history))
    page = vocab.encode(page_tokens(golden))
    return TokenExample(tuple(prompt + page), len(prompt), len(golden))


def sequence_windows(
    vocab: Vocabulary, user: str, sequence: Sequence[str], history_length: int, page_length: int
) -> list[TokenExample]:
    """The interaction sequence as pages: each block of ``page_length`` positives after the
    first, predicted from the ``history_length`` positives before it (as q_u and a page).

    A sequence of P <= ``page_length`` positives (P >= 2) has no full page after a history;
    its one window predicts its last ceil(P / 2) from the floor(P / 2) before, the split of a
    short history's prompt and golden list (``streams.derive.golden_list``). Without it a user
    with 10 or fewer positives gave meta pre-training no window at all."""
    if 2 <= len(sequence) <= page_length:
        ends: Sequence[int] = [len(sequence) // 2]
    else:
        ends = range(len(sequence) - page_length, 0, -page_length)
    return [
        golden_example(
            vocab,
            user,
            sequence[max(0, end - history_length) : end],
            sequence[end : end + page_length],
        )
        for end in ends
    ]


def shuffled_windows(
    vocab: Vocabulary,
    user: str,
    sequence: Sequence[str],
    history_length: int,
    page_length: int,
    draws: int,
    rng: random.Random,
) -> list[TokenExample]:
    """``draws`` order-free windows of a user's P >= 2 positives: each a random page of
    min(``page_length``, ceil(P / 2)) of them, predicted from a random ``history_length`` of the
    others (all when fewer; page and prompt each in time order).

    A user's held-out positives are a set, and the order inside a history says little about it:
    EASE, blind to order, is the best peer on MovieLens. Next-page windows teach only what came
    after what, once per window, and a short history has a single one; random splits teach the
    first slot which items go together in both directions, and from every history alike. The
    prompt is drawn too: the latest of the others would be nearly the same prompt in every draw
    of a long history (dense MovieLens, validation NDCG@100 after two epochs: 0.2649 with the
    latest, 0.2840 with a random draw)."""
    if len(sequence) < 2:
        return []
    page_size = min(page_length, (len(sequence) + 1) // 2)
    windows = []
    for _ in range(draws):
        order = rng.sample(range(len(sequence)), len(sequence))
        page = sorted(order[:page_size])
        prompt = sorted(order[page_size : page_size + history_length])
        windows.append(
            golden_example(vocab, user, [sequence[i] for i in prompt], [sequence[i] for i in page])
        )
    return windows


def meta_examples(
    vocab: Vocabulary,
    category_of: Mapping[str, str],
    sequences: Mapping[str, Sequence[str]],
    history_length: int,
    page_length: int,
    shuffled_draws: int = 0,
    seed: int = 0,
) -> list[TokenExample]:
    """The meta prompts: item -> category, co-occurrence within a category, and each user's
    interaction sequence as next-page windows (``sequence_windows``) and ``shuffled_draws``
    order-free windows (``shuffled_windows``)."""
    examples = []
    for item in vocab.items:
        if item in category_of:
            tokens = [BOS, item_token(item), CATEGORY_OF, category_token(category_of[item]), EOS]
            examples.append(TokenExample(tuple(vocab.encode(tokens)), 1))
    by_category: dict[str, list[str]] = {}
    for item in vocab.items:
        if item in category_of:
            by_category.setdefault(category_of[item], []).append(item)
    for category, items in sorted(by_category.items()):
        for start in range(0, len(items), CO_OCCURRENCE_CHUNK):
            chunk = items[start : start + CO_OCCURRENCE_CHUNK]
            tokens = [BOS, category_token(category), CATEGORY_OF, *map(item_token, chunk), EOS]
            examples.append(TokenExample(tuple(vocab.encode(tokens)), 1))
    rng = random.Random(seed)
    for user, sequence in sorted(sequences.items()):
        examples += sequence_windows(vocab, user, sequence, history_length, page_length)
        examples += shuffled_windows(
            vocab, user, sequence, history_length, page_length, shuffled_draws, rng
        )
    return examples


def rating_examples(
    vocab: Vocabulary, ratings: Iterable[tuple[str, str, float]]
) -> list[RatingExample]:
    return [
        RatingExample(tuple(vocab.encode([BOS, user_token(u), RATED, item_token(i)])), float(r))
        for u, i, r in ratings
    ]


def collate(examples: Sequence[TokenExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and labels (IGNORE before loss_from and on padding);
    for the page examples, the position of their first slot and their items (IGNORE-padded)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    pages = [(row, e) for row, e in enumerate(examples) if e.page_items]
    page_items = torch.full((len(pages), max((e.page_items for _, e in pages), default=0)), IGNORE)
    for row, e in enumerate(examples):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        labels[row, e.loss_from : n] = ids[row, e.loss_from : n]
    for k, (row, e) in enumerate(pages):
        page_items[k, : e.page_items] = ids[row, e.loss_from : e.loss_from + e.page_items]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        # The hidden state that predicts a page's first slot: the prompt's last token's.
        "page_rows": torch.tensor([row for row, _ in pages], dtype=torch.long),
        "page_slot": torch.tensor([e.loss_from - 1 for _, e in pages], dtype=torch.long),
        "page_items": page_items,
    }
