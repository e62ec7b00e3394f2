"""Generating a valid page: only item tokens, no repeats, none of the prompt's, exactly K.

``page_mask`` says which tokens may come next; ``generate_pages`` samples (or picks greedily)
under it, batched, with the model's key-value cache, and keeps each chosen token's log
probability under the masked distribution (what PPO's ratio needs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from learner.page_prompts import prompt_tokens
from learner.vocabulary import Vocabulary


def page_mask(
    banned: torch.Tensor, item_ids: torch.Tensor, produced: int, k: int, eos_id: int
) -> torch.Tensor:
    """Allowed next tokens, (batch, vocab): items not banned while produced < K, then only EOS."""
    allowed = torch.zeros_like(banned)
    if produced >= k:
        allowed[:, eos_id] = True
        return allowed
    allowed[:, item_ids] = True
    return allowed & ~banned


def masked_log_softmax(
    logits: torch.Tensor,
    banned: torch.Tensor,
    item_ids: torch.Tensor,
    produced: int,
    k: int,
    eos_id: int,
) -> torch.Tensor:
    """log pi(. | prefix) renormalised over the allowed tokens (-inf elsewhere)."""
    allowed = page_mask(banned, item_ids, produced, k, eos_id)
    return torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)


def item_bans(vocab: Vocabulary, item_sets: Sequence[Iterable[str]]) -> torch.Tensor:
    """(batch, vocab) True at each row's items: a page may not hold them."""
    banned = torch.zeros(len(item_sets), vocab.size, dtype=torch.bool)
    for row, items in enumerate(item_sets):
        banned[row, [vocab.id_of_item[i] for i in items if i in vocab.id_of_item]] = True
    return banned


def page_logprobs(
    step_logits: torch.Tensor,
    page_ids: torch.Tensor,
    bans: torch.Tensor,
    item_ids: torch.Tensor,
    k: int,
    eos_id: int,
) -> torch.Tensor:
    """log pi of each page token (batch, K + 1) under the masks decoding used (differentiable).

    ``step_logits[:, t]`` are the logits that chose ``page_ids[:, t]``.
    """
    banned = bans.clone()
    rows = torch.arange(page_ids.shape[0])
    out = []
    for t in range(page_ids.shape[1]):
        log_dist = masked_log_softmax(step_logits[:, t], banned, item_ids, t, k, eos_id)
        out.append(log_dist.gather(1, page_ids[:, t : t + 1]).squeeze(1))
        banned = banned.clone()
        banned[rows, page_ids[:, t]] = True
    return torch.stack(out, dim=1)


@dataclass
class GeneratedPages:
    """Prompts and pages as one left-padded batch, with what PPO needs of the page tokens."""

    input_ids: torch.Tensor  # (batch, prompt + K + 1), left-padded prompts
    attention_mask: torch.Tensor
    prompt_length: int  # padded prompt width; the page starts here
    token_logprobs: torch.Tensor  # (batch, K + 1) log pi(token | prefix) under the mask
    bans: torch.Tensor  # (batch, vocab) the items the pages may not hold (the prompts' at least)
    pages: list[list[str]]  # item ids, K per user

    @property
    def page_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_length :]


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) with every sequence right-aligned, so generation appends in step."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (padding does not shift them)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


@torch.no_grad()
def generate_pages(
    model: torch.nn.Module,
    vocab: Vocabulary,
    requests: Sequence[tuple[str, Sequence[str]]],
    k: int,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    also_banned: Sequence[Iterable[str]] | None = None,
) -> GeneratedPages:
    """A page of K items for each (user, history) request, none of the history's nor, per
    request, of ``also_banned``."""
    tok = vocab.tokenizer
    prompts = [vocab.encode(prompt_tokens(user, history)) for user, history in requests]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    prompt_length = ids.shape[1]
    item_ids = torch.tensor(vocab.item_ids, dtype=torch.long)
    extra = also_banned if also_banned is not None else [()] * len(requests)
    bans = item_bans(
        vocab, [[*history, *more] for (_, history), more in zip(requests, extra, strict=True)]
    )
    left = len(item_ids) - bans[:, item_ids].sum(dim=1)
    if bool((left < k).any()):
        row = int((left < k).nonzero()[0])
        raise ValueError(
            f"requests[{row}] (user {requests[row][0]!r}): only {int(left[row])} items are left"
            f" after its bans, a page needs {k}"
        )
    banned = bans.clone()
    logprobs = []
    past = None
    step_ids, step_mask = ids, mask
    for produced in range(k + 1):
        positions = position_ids(step_mask)
        if past is not None:  # the cache holds the prefix: feed only the newest token
            positions = positions[:, -1:]
        out = model(
            input_ids=step_ids if past is None else step_ids[:, -1:],
            attention_mask=step_mask,
            position_ids=positions,
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        logits = out.logits[:, -1, :] / temperature
        log_dist = masked_log_softmax(logits, banned, item_ids, produced, k, tok.eos_token_id)
        if greedy:
            chosen = log_dist.argmax(dim=-1)
        else:
            chosen = torch.multinomial(log_dist.exp(), 1, generator=generator).squeeze(1)
        logprobs.append(log_dist.gather(1, chosen[:, None]).squeeze(1))
        banned[torch.arange(len(requests)), chosen] = True
        step_ids = torch.cat([step_ids, chosen[:, None]], dim=1)
        step_mask = torch.cat([step_mask, torch.ones_like(chosen[:, None])], dim=1)
    page_ids = step_ids[:, prompt_length : prompt_length + k]
    pages = [[vocab.item_of_id[int(t)] for t in row] for row in page_ids]
    return GeneratedPages(step_ids, step_mask, prompt_length, torch.stack(logprobs, 1), bans, pages)
