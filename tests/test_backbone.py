"""Both backbone paths: built from a configuration, and a local pretrained model extended."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from learner.backbone import (
    BackboneSettings,
    add_embedding_rows,
    build_policy,
    extend_pretrained,
)
from learner.vocabulary import (
    Vocabulary,
    build_vocabulary,
    category_token,
    grow_vocabulary,
    item_token,
    user_token,
)

torch.set_num_threads(1)
USERS = [f"u{i}" for i in range(200)]
ITEMS = [f"i{i}" for i in range(300)]
CATEGORIES = ["Toys & Games", "Books", "books"]


def test_vocabulary_has_one_token_per_user_item_and_category(tmp_path: Path) -> None:
    vocab = build_vocabulary(USERS, ITEMS, CATEGORIES)
    assert category_token("Toys & Games") == "cat_toys_games"
    ids = vocab.tokenizer("[BOS] user_u7 [HIST] item_i3 item_i12 [PAGE]")["input_ids"]
    assert vocab.tokenizer.convert_ids_to_tokens(ids) == [
        "[BOS]", "user_u7", "[HIST]", "item_i3", "item_i12", "[PAGE]",
    ]  # fmt: skip
    assert len(set(vocab.item_ids)) == 300 and vocab.item_of_id[vocab.id_of_item["i5"]] == "i5"
    with pytest.raises(KeyError, match="item_nope"):
        vocab.token_id(item_token("nope"))
    vocab.save(tmp_path)
    again = Vocabulary.load(tmp_path)
    assert again.item_ids == vocab.item_ids and again.size == vocab.size


def test_the_default_backbone_is_built_from_settings() -> None:
    vocab = build_vocabulary(USERS, ITEMS, CATEGORIES)
    model = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=1, n_head=2))
    logits = model(torch.tensor([vocab.encode(["[BOS]", "user_u1", "[HIST]", "item_i1"])])).logits
    assert logits.shape == (1, 4, vocab.size)
    assert model.config.eos_token_id == vocab.tokenizer.eos_token_id


def save_tiny_pretrained(directory: Path) -> GPT2LMHeadModel:
    """A tiny 'pretrained' LM with a vocabulary of ordinary words, saved the way a hub does."""
    words = ["<unk>", "<s>", "</s>", "the", "a", "toy", "book", "good", "bad", "is"]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_embd=16, n_layer=1, n_head=2,
                                       n_positions=32, bos_token_id=1, eos_token_id=2))  # fmt: skip
    tokenizer.save_pretrained(str(directory))
    model.save_pretrained(str(directory))
    return model


def test_a_local_pretrained_model_is_extended_with_gaussian_rows(tmp_path: Path) -> None:
    original = save_tiny_pretrained(tmp_path / "tiny")
    old = original.get_input_embeddings().weight.detach().clone()
    model, vocab = extend_pretrained(tmp_path / "tiny", USERS, ITEMS, CATEGORIES, seed=3)
    weight = model.get_input_embeddings().weight.detach()
    assert torch.equal(weight[: len(old)], old)  # the language rows are untouched
    new = weight[len(old) :]
    assert len(new) == vocab.size - len(old) > 500
    assert abs(new.mean().item()) < 4 * old.std().item() / new.numel() ** 0.5
    assert new.var().item() == pytest.approx(old.var().item(), rel=0.1)
    # Tied output head: the new tokens can be generated.
    assert model.get_output_embeddings().weight.shape[0] == vocab.size
    ids = vocab.tokenizer("the user_u7 item_i3 [PAGE]", add_special_tokens=False)["input_ids"]
    assert vocab.tokenizer.convert_ids_to_tokens(ids) == ["the", "user_u7", "item_i3", "[PAGE]"]
    assert ids[2] == vocab.id_of_item["i3"]
    assert model(torch.tensor([ids])).logits.shape == (1, 4, vocab.size)


def test_a_grown_vocabulary_keeps_every_old_id_and_row(tmp_path: Path) -> None:
    vocab = build_vocabulary(USERS[:10], ITEMS[:20], ["Books"])
    policy = build_policy(vocab, BackboneSettings(n_embd=64, n_layer=1, n_head=2), seed=1)
    old_ids = {t: vocab.token_id(t) for t in vocab.tokenizer.get_vocab()}
    old_rows = policy.get_input_embeddings().weight.detach().clone()
    before = vocab.size  # the tokenizer grows in place
    # i1 and i10 are old, i100 is new: no token may swallow a longer one when text is tokenized.
    grown = grow_vocabulary(vocab, ["u0", "u_new"], ["i1", "i100", "i10", "i_new"], ["Toys"])
    grown.save(tmp_path)
    grown = Vocabulary.load(tmp_path)
    assert {t: grown.token_id(t) for t in old_ids} == old_ids
    new = [user_token("u_new"), item_token("i_new"), item_token("i100"), category_token("Toys")]
    assert sorted(grown.encode(new)) == list(range(before, before + 4)) and grown.size == before + 4
    assert grown.items[:20] == vocab.items
    assert grown.item_of_id[grown.id_of_item["i_new"]] == "i_new"
    text = ["item_i100", "item_i10", "item_i1"]
    assert grown.tokenizer(" ".join(text))["input_ids"] == grown.encode(text)

    add_embedding_rows(policy, before, grown.size, seed=0)
    rows = policy.get_input_embeddings().weight.detach()
    assert rows.shape[0] == grown.size and torch.equal(rows[:before], old_rows)
    assert policy.get_output_embeddings().weight.shape[0] == grown.size
    # N(0, var of the old rows): the new rows' spread matches within sampling error.
    ratio = float(rows[before:].var() / old_rows.var())
    assert 0.5 < ratio < 1.6, ratio
