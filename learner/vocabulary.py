"""The policy's words: one token per user, item and category, plus the structure tokens.

A page is written as item tokens, so constrained decoding needs to know exactly which ids are
items; ``Vocabulary`` keeps that map beside the tokenizer. The default tokenizer is word-level
and built from the catalogue (nothing downloaded); a pretrained model's tokenizer is extended
with the same user and item tokens instead (``backbone.extend_pretrained``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
# Structure of prompts: the user's history, the page to generate, meta-prompt fields.
HISTORY, PAGE, CATEGORY_OF, RATED = "[HIST]", "[PAGE]", "[CAT]", "[RATED]"
STRUCTURE = (PAD, BOS, EOS, UNK, HISTORY, PAGE, CATEGORY_OF, RATED)
RATING_TOKENS = tuple(f"rating_{r}" for r in range(1, 6))
MAP_FILE = "pagellm_vocabulary.json"


def user_token(user_id: str) -> str:
    return f"user_{user_id}"


def item_token(item_id: str) -> str:
    return f"item_{item_id}"


def category_token(category: str) -> str:
    """cat_<category> with every run of non-word characters as one underscore."""
    return "cat_" + re.sub(r"\W+", "_", category.strip()).strip("_").lower()


@dataclass
class Vocabulary:
    """A tokenizer and which of its ids are items, users and categories."""

    tokenizer: PreTrainedTokenizerBase
    items: tuple[str, ...]
    users: tuple[str, ...]
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        ids = self.tokenizer.convert_tokens_to_ids
        self.item_ids: list[int] = [ids(item_token(i)) for i in self.items]
        self.item_of_id: dict[int, str] = dict(zip(self.item_ids, self.items, strict=True))
        self.id_of_item: dict[str, int] = dict(zip(self.items, self.item_ids, strict=True))
        self.item_index: dict[str, int] = {item: n for n, item in enumerate(self.items)}

    @property
    def size(self) -> int:
        return len(self.tokenizer)

    def token_id(self, token: str) -> int:
        found = self.tokenizer.convert_tokens_to_ids(token)
        if found is None or (found == self.tokenizer.unk_token_id and token != UNK):
            raise KeyError(f"{token!r} is not in the vocabulary")
        return int(found)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Ids of tokens (each a whole word of the vocabulary)."""
        return [self.token_id(t) for t in tokens]

    def save(self, directory: Path) -> None:
        self.tokenizer.save_pretrained(str(directory))
        mapping = {"items": self.items, "users": self.users, "categories": self.categories}
        (directory / MAP_FILE).write_text(json.dumps(mapping))

    @classmethod
    def load(cls, directory: Path) -> Vocabulary:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory))
        mapping = json.loads((directory / MAP_FILE).read_text())
        return cls(
            tokenizer,
            tuple(mapping["items"]),
            tuple(mapping["users"]),
            tuple(mapping["categories"]),
        )


def domain_tokens(
    users: Iterable[str], items: Iterable[str], categories: Iterable[str]
) -> list[str]:
    """The tokens a domain adds: ratings, users, items, categories (sorted, so stable)."""
    return [
        *RATING_TOKENS,
        *(user_token(u) for u in sorted(set(users))),
        *(item_token(i) for i in sorted(set(items))),
        *sorted({category_token(c) for c in categories}),
    ]


def build_vocabulary(
    users: Iterable[str], items: Iterable[str], categories: Iterable[str]
) -> Vocabulary:
    """A word-level tokenizer of exactly the structure and domain tokens (ids in that order)."""
    users, items, categories = sorted(set(users)), sorted(set(items)), sorted(set(categories))
    words = [*STRUCTURE, *domain_tokens(users, items, categories)]
    model = WordLevel({w: i for i, w in enumerate(words)}, unk_token=UNK)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = WhitespaceSplit()
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    return Vocabulary(wrapped, tuple(items), tuple(users), tuple(categories))


def grow_vocabulary(
    vocab: Vocabulary, users: Iterable[str], items: Iterable[str], categories: Iterable[str]
) -> Vocabulary:
    """``vocab`` with the users, items and categories it lacks appended as new tokens: every id
    it had keeps its meaning, so a trained model needs new embedding rows only.

    The tokenizer is changed in place; the returned vocabulary lists old and new entries.
    """
    new_users = sorted(set(users) - set(vocab.users))
    new_items = sorted(set(items) - set(vocab.items))
    new_categories = sorted(set(categories) - set(vocab.categories))
    tok = vocab.tokenizer
    missing = [
        t
        for t in domain_tokens(new_users, new_items, new_categories)
        if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)
    ]
    # single_word: an added token never matches inside a longer id when text is tokenized.
    tok.add_tokens([AddedToken(t, single_word=True, normalized=False) for t in missing])
    return Vocabulary(
        tok,
        (*vocab.items, *new_items),
        (*vocab.users, *new_users),
        (*vocab.categories, *new_categories),
    )
