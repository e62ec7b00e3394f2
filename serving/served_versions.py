"""A registered version as serving holds it: loaded once, asked for pages in batches.

Two kinds. A learned version writes pages with its PPO policy by constrained greedy decoding
(catalogue items of its vocabulary only, no repeats, none the user liked or bought or the
request excludes, exactly k). A popularity version ranks by its frozen ranking. When a learned
version cannot write a page for a request, it says why (``Fallback``) and the caller serves the
cold-start fallback instead:

* the user has no token in the version (a user who arrived after its snapshot);
* the page and the shortest prompt do not fit the model's context (k too large for it);
* fewer than k of the version's items are left after the bans.

Items of the user's history unknown to the version are left out of the prompt (the model cannot
read them); the prompt keeps the most recent positives that fit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from learner.artifacts import load_policy, load_reward_model
from learner.constrained_decoding import generate_pages
from learner.registry import ModelRegistry
from learner.reward_heads import RewardModel, page_batch
from learner.version_eval import POLICY, REWARD, VOCABULARY
from learner.vocabulary import Vocabulary
from schemas.model_registry import VersionRecord
from serving.popularity import POPULARITY, load_ranking, popularity_page
from streams.derive.golden_list import DEFAULT_PROMPT_LENGTH
from streams.derive.snapshot_store import SnapshotError, read_manifest
from streams.store.event_store import EventStore

log = logging.getLogger(__name__)

# [BOS] user [HIST] ... [PAGE] around the history, [EOS] after the page.
PROMPT_FRAME_TOKENS, PAGE_END_TOKENS = 4, 1


@dataclass(frozen=True)
class PagePlan:
    """One request as a version sees it."""

    user_id: str
    positives: tuple[str, ...]  # the user's positives, oldest first
    # What no page of it may hold, whichever path writes it: the user's liked items (in the
    # prompt or not), bought items, the request's exclusions and the items deleted from the
    # catalogue. The policy's page at the
    # largest k, whose prompt had no room, held liked items that the fallback left out.
    banned: frozenset[str]
    k: int


@dataclass(frozen=True)
class Fallback:
    reason: str


class UnknownToVersion(ValueError):
    """A score request names a user or item the version has no token for."""


def prompt_history(
    positives: Sequence[str], known: set[str] | dict[str, int], length: int, room: int
) -> tuple[str, ...]:
    """The most recent ``min(length, room)`` positives the version knows, oldest first."""
    keep = min(length, room)
    usable = [i for i in positives if i in known]
    return tuple(usable[-keep:]) if keep > 0 else ()


class LearnedVersion:
    kind = "pagellm"

    def __init__(
        self, record: VersionRecord, model_dir: Path, prompt_length: int, policy: str = POLICY
    ) -> None:
        """``policy``: the version's served policy, or ``REFERENCE`` (the fine-tuned policy its
        PPO started from) to see what PPO changed."""
        self.record = record
        self.vocab = Vocabulary.load(model_dir / VOCABULARY)
        self.policy = load_policy(model_dir / policy)
        self.reward_model: RewardModel = load_reward_model(model_dir / REWARD)
        self.prompt_length = prompt_length
        self.context_tokens = int(self.policy.config.n_positions)  # type: ignore[union-attr]
        self.users = set(self.vocab.users)
        self.items = set(self.vocab.items)

    @property
    def version(self) -> str:
        return self.record.version

    def plan_prompt(self, plan: PagePlan) -> tuple[str, ...] | Fallback:
        """The prompt's history for ``plan``, or why the version cannot write its page."""
        if plan.user_id not in self.users:
            return Fallback(f"user {plan.user_id!r} is unknown to {self.version} (cold start)")
        room = self.context_tokens - PROMPT_FRAME_TOKENS - plan.k - PAGE_END_TOKENS
        if room < 0:
            most = self.context_tokens - PROMPT_FRAME_TOKENS - PAGE_END_TOKENS
            return Fallback(f"k: {self.version} writes pages of at most {most} items")
        history = prompt_history(plan.positives, self.vocab.id_of_item, self.prompt_length, room)
        left = len(self.vocab.items) - len(plan.banned & self.items)
        if left < plan.k:
            return Fallback(f"only {left} of {self.version}'s items are left after the bans")
        return history

    def pages(self, plans: Sequence[PagePlan]) -> list[list[str] | Fallback]:
        """Pages for ``plans``: one batched generation per page size."""
        prompts = [self.plan_prompt(p) for p in plans]
        out: list[list[str] | Fallback] = [p if isinstance(p, Fallback) else [] for p in prompts]
        by_k: dict[int, list[int]] = {}
        for n, (plan, prompt) in enumerate(zip(plans, prompts, strict=True)):
            if not isinstance(prompt, Fallback):
                by_k.setdefault(plan.k, []).append(n)
        for k, rows in by_k.items():
            generated = generate_pages(
                self.policy,
                self.vocab,
                [(plans[n].user_id, prompts[n]) for n in rows],  # type: ignore[misc]
                k,
                greedy=True,
                also_banned=[plans[n].banned for n in rows],
            )
            for n, page in zip(rows, generated.pages, strict=True):
                out[n] = page
        return out

    @torch.no_grad()
    def score(
        self, user_id: str, positives: Sequence[str], pages: Sequence[Sequence[str]]
    ) -> list[tuple[float, float]]:
        """(R_c, R_f) of each page after the user's prompt."""
        if user_id not in self.users:
            raise UnknownToVersion(f"user_id: {user_id!r} is unknown to {self.version}")
        for n, page in enumerate(pages):
            unknown = [i for i in page if i not in self.vocab.id_of_item]
            if unknown:
                raise UnknownToVersion(
                    f"pages.{n}: item {unknown[0]!r} is unknown to {self.version}"
                )
        longest = max(len(p) for p in pages)
        room = self.context_tokens - PROMPT_FRAME_TOKENS - longest - PAGE_END_TOKENS
        if room < 0:
            most = self.context_tokens - PROMPT_FRAME_TOKENS - PAGE_END_TOKENS
            raise UnknownToVersion(f"pages: {self.version} scores pages of at most {most} items")
        history = prompt_history(positives, self.vocab.id_of_item, self.prompt_length, room)
        batch = page_batch(self.vocab, [(user_id, history)] * len(pages), pages)
        page_reward, item_reward = self.reward_model(batch)
        return list(zip(page_reward.tolist(), item_reward.tolist(), strict=True))


class PopularityVersion:
    kind = "popularity"

    def __init__(self, record: VersionRecord, model_dir: Path) -> None:
        self.record = record
        self.ranking, self.category_of = load_ranking(model_dir / POPULARITY)

    @property
    def version(self) -> str:
        return self.record.version

    def pages(self, plans: Sequence[PagePlan]) -> list[list[str] | Fallback]:
        out: list[list[str] | Fallback] = []
        for plan in plans:
            page = popularity_page(self.ranking, plan.k, plan.banned)
            out.append(page if len(page) == plan.k else Fallback(
                f"only {len(page)} of {self.version}'s items are left after the bans"))  # fmt: skip
        return out


ServedVersion = LearnedVersion | PopularityVersion


def snapshot_prompt_length(store_dir: Path, snapshot_id: str) -> int:
    """The prompt length the version's training snapshot used (the derive default if unknown)."""
    try:
        config = read_manifest(EventStore(store_dir), snapshot_id).config
    except (SnapshotError, FileNotFoundError):
        return DEFAULT_PROMPT_LENGTH
    return int(config.get("prompt_length", DEFAULT_PROMPT_LENGTH))  # type: ignore[call-overload]


def load_served_version(registry: ModelRegistry, store_dir: Path, version: str) -> ServedVersion:
    """Load a registered version for serving (safetensors and JSON only: no pickle)."""
    record = registry.record(version)
    model_dir = registry.model_dir(version)
    started = datetime.now(UTC)
    served: ServedVersion
    if record.kind == "popularity":
        served = PopularityVersion(record, model_dir)
    else:
        length = snapshot_prompt_length(store_dir, record.snapshot_id)
        served = LearnedVersion(record, model_dir, length)
    seconds = (datetime.now(UTC) - started).total_seconds()
    log.info("loaded %s (%s) in %.2f s", version, record.kind, seconds)
    return served
