"""The policy's backbone: a GPT-2 style decoder, built small from a configuration or loaded.

Default: a GPT-2 configuration sized for a CPU (``BackboneSettings``; the paper's 768 x 12 is
one setting away) over the catalogue's word-level vocabulary. Other path: a pretrained causal
LM from a local directory, its tokenizer extended with the user, item and category tokens and
their new embedding rows drawn from N(0, var) with var the variance of the existing rows, as
the paper initialises them. Nothing is ever downloaded: loading is ``local_files_only``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
)

from learner.settings import BackboneSettings
from learner.vocabulary import (
    BOS,
    CATEGORY_OF,
    EOS,
    HISTORY,
    PAD,
    PAGE,
    RATED,
    Vocabulary,
    domain_tokens,
)


def build_policy(
    vocabulary: Vocabulary, settings: BackboneSettings, seed: int = 0
) -> GPT2LMHeadModel:
    """A freshly initialised GPT-2 decoder over ``vocabulary``."""
    tok = vocabulary.tokenizer
    config = GPT2Config(
        vocab_size=vocabulary.size,
        n_embd=settings.n_embd,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        n_positions=settings.n_positions,
        resid_pdrop=settings.dropout,
        embd_pdrop=settings.dropout,
        attn_pdrop=settings.dropout,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def gaussian_rows_like(
    existing: torch.Tensor, rows: int, generator: torch.Generator
) -> torch.Tensor:
    """New embedding rows ~ N(0, var(existing)), var over all entries of the existing rows."""
    std = existing.float().var().sqrt()
    return torch.randn(rows, existing.shape[1], generator=generator, device=existing.device) * std


def add_embedding_rows(model: PreTrainedModel, first_new: int, size: int, seed: int) -> None:
    """Resize the token embeddings to ``size`` rows: rows from ``first_new`` on are drawn from
    N(0, var) of the rows before it, which stay untouched (so do the tied output rows)."""
    old = model.get_input_embeddings().weight.data[:first_new].clone()
    model.resize_token_embeddings(size, mean_resizing=False)
    generator = torch.Generator(old.device).manual_seed(seed)  # CUDA draws need a CUDA generator
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        weight[first_new:] = gaussian_rows_like(old, size - first_new, generator)


def extend_pretrained(
    directory: Path,
    users: list[str],
    items: list[str],
    categories: list[str],
    seed: int = 0,
) -> tuple[PreTrainedModel, Vocabulary]:
    """(model, vocabulary): a local pretrained causal LM with the domain tokens added."""
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    before = len(tokenizer)
    specials = {"additional_special_tokens": [HISTORY, PAGE, CATEGORY_OF, RATED]}
    for name, token in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD)):
        if getattr(tokenizer, name) is None:
            specials[name] = token
    tokenizer.add_special_tokens(specials)
    tokenizer.add_tokens(domain_tokens(users, items, categories))
    add_embedding_rows(model, before, len(tokenizer), seed)
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    vocabulary = Vocabulary(
        tokenizer,
        tuple(sorted(set(items))),
        tuple(sorted(set(users))),
        tuple(sorted(set(categories))),
    )
    return model, vocabulary


def hidden_size(model: torch.nn.Module) -> int:
    """The width of the model's hidden states (GPT-2 calls it n_embd)."""
    config = model.config  # type: ignore[attr-defined]
    return int(getattr(config, "n_embd", None) or config.hidden_size)


def last_hidden_states(model: PreTrainedModel, **inputs: torch.Tensor) -> torch.Tensor:
    """(batch, length, width): the decoder's final hidden states, without the output layer.

    The output layer maps each state to a logit per token of the vocabulary (users included),
    by far a step's largest cost on a large catalogue: apply it (``output_logits``) only to
    the states whose next token is scored."""
    return model.base_model(**inputs).last_hidden_state


def output_logits(model: PreTrainedModel, hidden: torch.Tensor) -> torch.Tensor:
    """The output layer (the language-model head) applied to ``hidden``."""
    return model.get_output_embeddings()(hidden)
