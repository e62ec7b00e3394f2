"""How a user's request and a page are written as tokens (the paper's prompt q_u and list)."""

from __future__ import annotations

from collections.abc import Sequence

from learner.vocabulary import BOS, EOS, HISTORY, PAGE, item_token, user_token


def prompt_tokens(user_id: str, history: Sequence[str]) -> list[str]:
    """q_u = [BOS] user [HIST] recent positives, oldest first [PAGE]."""
    return [BOS, user_token(user_id), HISTORY, *(item_token(i) for i in history), PAGE]


def page_tokens(items: Sequence[str]) -> list[str]:
    """The page after the prompt: its items in order, then [EOS]."""
    return [*(item_token(i) for i in items), EOS]
