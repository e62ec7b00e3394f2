"""The supervised warm-up learns learnable toy data: every loss term falls; its next-token
loss, which applies the output layer only where a token is scored, is the full-sequence one."""

from __future__ import annotations

import math
import random

import pytest
import torch

from learner.backbone import build_policy
from learner.constrained_decoding import generate_pages
from learner.offline_eval import first_slot_scores
from learner.settings import BackboneSettings, SupervisedSettings
from learner.supervised import (
    RatingHead,
    TrainingCurve,
    finetune_on_golden_lists,
    meta_pretrain,
    page_set_loss,
    token_losses,
)
from learner.token_sequences import (
    IGNORE,
    TokenExample,
    collate,
    golden_example,
    meta_examples,
    rating_examples,
    sequence_windows,
    shuffled_windows,
)
from learner.vocabulary import Vocabulary, build_vocabulary

torch.set_num_threads(1)
USERS = [f"u{i}" for i in range(24)]
ITEMS = [f"i{i}" for i in range(40)]
CATEGORY = {item: f"c{n % 4}" for n, item in enumerate(ITEMS)}
FAST = {"batch_size": 8, "meta_lr": 3e-3, "finetune_lr": 3e-3}


def toy_world():
    """Each user's history and golden list are a fixed function of the user: learnable."""
    vocab = build_vocabulary(USERS, ITEMS, set(CATEGORY.values()))
    history = {u: [ITEMS[(3 * n + j) % 40] for j in range(4)] for n, u in enumerate(USERS)}
    golden = {u: [ITEMS[(3 * n + 4 + 2 * j) % 40] for j in range(5)] for n, u in enumerate(USERS)}
    return vocab, history, golden


def test_meta_pretraining_lowers_next_token_and_rating_losses() -> None:
    vocab, history, _ = toy_world()
    model = build_policy(vocab, BackboneSettings(n_embd=48, n_layer=2, n_head=2), seed=0)
    head = RatingHead(48)
    # An additive rating: a generous or harsh user, a good or poor item.
    ratings = [(u, i, 1.0 + 2 * (a % 2) + 2 * (b % 2))
               for a, u in enumerate(USERS) for b, i in enumerate(ITEMS[:10])]  # fmt: skip
    curve = TrainingCurve()
    meta_pretrain(
        model, head, meta_examples(vocab, CATEGORY, history, 2, 2), rating_examples(vocab, ratings),
        SupervisedSettings(meta_epochs=25, **FAST), curve, vocab.tokenizer.pad_token_id,
    )  # fmt: skip
    for term in ("meta_next_token", "rating_mse"):
        first, last = curve.epochs[term][0], curve.epochs[term][-1]
        assert last < 0.5 * first, f"{term}: {first:.3f} -> {last:.3f}"


def test_page_set_loss_by_hand() -> None:
    # Two pages over a 4-token vocabulary. Page 1 holds tokens 0 and 2 of logits (0, 0, ln 2,
    # 0): p = (1, 1, 2, 1) / 5, loss -(ln 1/5 + ln 2/5) / 2. Page 2 holds token 3 alone (the
    # other slot is padding) of uniform logits: -ln 1/4.
    logits = torch.tensor([[0.0, 0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0, 0.0]])
    items = torch.tensor([[0, 2], [3, IGNORE]])
    page1 = -(math.log(1 / 5) + math.log(2 / 5)) / 2
    expected = (page1 - math.log(1 / 4)) / 2
    assert page_set_loss(logits, items).item() == pytest.approx(expected, rel=1e-6)


def test_collate_marks_page_examples_first_slot_and_items() -> None:
    vocab, history, golden = toy_world()
    page = golden_example(vocab, "u0", history["u0"], golden["u0"])
    meta = meta_examples(vocab, CATEGORY, {}, 2, 2)[0]  # item -> category: not a page
    batch = collate([meta, page], vocab.tokenizer.pad_token_id)
    assert batch["page_rows"].tolist() == [1]
    assert batch["page_slot"].tolist() == [page.loss_from - 1]  # the prompt's last token
    assert batch["page_items"].tolist() == [vocab.encode([f"item_{i}" for i in golden["u0"]])]


def test_next_token_loss_is_transformers_full_sequence_loss() -> None:
    vocab, history, golden = toy_world()
    model = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=2, n_head=2), seed=1)
    # Prompts of different lengths (so right padding), golden pages and meta prompts mixed.
    examples = [golden_example(vocab, u, history[u][: 1 + n % 4], golden[u])
                for n, u in enumerate(USERS[:6])]  # fmt: skip
    examples += meta_examples(vocab, CATEGORY, {}, 2, 2)[:4]
    batch = collate(examples, vocab.tokenizer.pad_token_id)
    ours = token_losses(model, batch)[0]
    reference = model(**batch).loss  # transformers: logits at every position, then shifted
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    ours.backward()
    ours_grad = model.get_output_embeddings().weight.grad.clone()
    model.zero_grad()
    reference.backward()
    torch.testing.assert_close(ours_grad, model.get_output_embeddings().weight.grad)


def test_finetuning_learns_the_golden_lists() -> None:
    vocab, history, golden = toy_world()
    model = build_policy(vocab, BackboneSettings(n_embd=48, n_layer=2, n_head=2), seed=0)
    examples = [golden_example(vocab, u, history[u], golden[u]) for u in USERS]
    curve = TrainingCurve()
    finetune_on_golden_lists(model, examples, SupervisedSettings(finetune_epochs=40, **FAST),
                             curve, vocab.tokenizer.pad_token_id)  # fmt: skip
    nll = curve.epochs["finetune_nll"]
    assert nll[-1] < 0.25 * nll[0], f"{nll[0]:.3f} -> {nll[-1]:.3f}"
    model.eval()
    pages = generate_pages(model, vocab, [(u, history[u]) for u in USERS], k=5, greedy=True).pages
    exact = sum(page == golden[u] for u, page in zip(USERS, pages, strict=True))
    assert exact >= len(USERS) // 2, f"only {exact} of {len(USERS)} golden lists reproduced"


def first_slot_recall(page_set_weight: float) -> float:
    """Share of the golden items in the first slot's top 5 after fine-tuning the toy world."""
    vocab, history, golden = toy_world()
    model = build_policy(vocab, BackboneSettings(n_embd=48, n_layer=2, n_head=2), seed=0)
    examples = [golden_example(vocab, u, history[u], golden[u]) for u in USERS]
    settings = SupervisedSettings(finetune_epochs=40, page_set_weight=page_set_weight, **FAST)
    finetune_on_golden_lists(model, examples, settings, TrainingCurve(),
                             vocab.tokenizer.pad_token_id)  # fmt: skip
    model.eval()
    scores = first_slot_scores(model, vocab, [(u, history[u]) for u in USERS])
    top = torch.topk(scores, 5).indices.tolist()
    found = sum(vocab.items[i] in golden[u] for u, row in zip(USERS, top, strict=True) for i in row)
    return found / (5 * len(USERS))


def test_the_page_set_loss_teaches_the_first_slot_the_whole_page() -> None:
    # Next-token training teaches the first slot the page's first item only; the rest of the
    # page is learnt in the later slots, so the first slot's top 5 holds the page by chance.
    without, with_set = first_slot_recall(0.0), first_slot_recall(1.0)
    assert with_set >= 0.9, f"first slot's top 5 hold {with_set:.2f} of the pages"
    assert with_set > without + 0.2, f"{without:.2f} -> {with_set:.2f}"


def test_an_interaction_sequence_becomes_next_page_windows() -> None:
    vocab = build_vocabulary(["u0"], list("abcdefg"), ["c0"])
    windows = sequence_windows(vocab, "u0", list("abcdefg"), history_length=3, page_length=2)
    # ends at 5, 3, 1: (c d e -> f g), (a b c -> d e), (a -> b c)
    expected = [("cde", "fg"), ("abc", "de"), ("a", "bc")]
    assert [(w.ids, w.loss_from) for w in windows] == [
        (e.ids, e.loss_from)
        for e in (golden_example(vocab, "u0", list(h), list(p)) for h, p in expected)
    ]


def test_a_sequence_shorter_than_a_page_still_gives_one_window() -> None:
    vocab = build_vocabulary(["u0"], list("abcde"), ["c0"])
    (window,) = sequence_windows(vocab, "u0", list("abcde"), history_length=3, page_length=10)
    # five positives: the last three predicted from the two before, as a short history's lists
    expected = golden_example(vocab, "u0", list("ab"), list("cde"))
    assert (window.ids, window.loss_from) == (expected.ids, expected.loss_from)
    assert sequence_windows(vocab, "u0", ["a"], history_length=3, page_length=10) == []


def trained_with_scores(
    stage: str, scores: list[float]
) -> tuple[torch.nn.Module, TrainingCurve, list[dict]]:
    """Train the toy world in ``stage`` (meta or finetune) with ``scores`` as the successive
    validation scores; returns the model, its curve and the weights each score was given to."""
    vocab, history, golden = toy_world()
    model = build_policy(vocab, BackboneSettings(n_embd=48, n_layer=2, n_head=2), seed=0)
    examples = [golden_example(vocab, u, history[u], golden[u]) for u in USERS]
    given, states = iter(scores), []

    def validation_score(scored: torch.nn.Module) -> float:
        states.append({k: v.clone() for k, v in scored.state_dict().items()})
        return next(given)

    curve = TrainingCurve()
    pad = vocab.tokenizer.pad_token_id
    if stage == "meta":
        settings = SupervisedSettings(meta_epochs=10, meta_patience=2, **FAST)
        meta_pretrain(model, RatingHead(48), examples, [], settings, curve, pad,
                      validation_score=validation_score)  # fmt: skip
    else:
        settings = SupervisedSettings(finetune_epochs=10, finetune_patience=2, **FAST)
        finetune_on_golden_lists(model, examples, settings, curve, pad,
                                 validation_score=validation_score)  # fmt: skip
    return model, curve, states


def same_weights(model: torch.nn.Module, state: dict) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_finetuning_keeps_the_best_validation_epoch_and_stops_after_patience() -> None:
    model, curve, states = trained_with_scores("finetune", [0.1, 0.3, 0.2, 0.25, 0.9])
    # scored before training (0.1), then best after epoch 1 (0.3); epochs 2 and 3 do no
    # better, so it stops there and restores epoch 1's weights
    assert curve.epochs["validation_ndcg@100"] == [0.1, 0.3, 0.2, 0.25]
    assert len(curve.epochs["finetune_nll"]) == 3
    assert same_weights(model, states[1])
    assert not same_weights(model, states[3])


def test_meta_pretraining_keeps_its_best_validation_epoch_and_stops_after_patience() -> None:
    model, curve, states = trained_with_scores("meta", [0.3, 0.5, 0.4, 0.2, 0.9])
    # no score before training (random weights); best after epoch 2, none better after 3 and 4
    assert curve.epochs["validation_ndcg@100"] == [0.3, 0.5, 0.4, 0.2]
    assert len(curve.epochs["meta_next_token"]) == 4
    assert same_weights(model, states[1])
    assert not same_weights(model, states[3])


def test_finetuning_that_never_beats_the_warm_up_keeps_the_warm_up() -> None:
    model, curve, states = trained_with_scores("finetune", [0.3, 0.2, 0.1, 0.9])
    assert curve.epochs["validation_ndcg@100"] == [0.3, 0.2, 0.1]
    assert len(curve.epochs["finetune_nll"]) == 2
    assert same_weights(model, states[0])
    assert not same_weights(model, states[2])


def test_shuffled_windows_split_a_history_into_a_random_page_and_a_prompt_in_time_order() -> None:
    vocab = build_vocabulary(["u0"], list("abcdefg"), ["c0"])
    sequence = list("abcde")
    windows = shuffled_windows(vocab, "u0", sequence, 1, 10, draws=30, rng=random.Random(0))
    assert len(windows) == 30
    pages, not_latest = set(), 0
    for w in windows:
        page, prompt = page_and_prompt(vocab, w)
        # five positives: a page of ceil(5/2) = 3, the prompt one (history 1) of the other two
        assert len(page) == 3 and page == sorted(page)
        rest = sorted(set(sequence) - set(page))
        assert len(prompt) == 1 and prompt[0] in rest
        not_latest += prompt != rest[-1:]
        pages.add("".join(page))
    assert len(pages) > 5  # the draws differ
    assert 5 < not_latest < 25  # the prompt is drawn too, not always the latest of the rest
    # a history longer than the rest: all of it, in time order
    for w in shuffled_windows(vocab, "u0", sequence, 3, 10, draws=5, rng=random.Random(1)):
        page, prompt = page_and_prompt(vocab, w)
        assert prompt == sorted(set(sequence) - set(page))
    assert shuffled_windows(vocab, "u0", ["a"], 1, 10, draws=3, rng=random.Random(0)) == []


def page_and_prompt(vocab: Vocabulary, window: TokenExample) -> tuple[list[str], list[str]]:
    """A window's page items and prompt items, as item ids."""
    tokens = vocab.tokenizer.convert_ids_to_tokens(list(window.ids))
    end = window.loss_from + window.page_items
    page = [t.removeprefix("item_") for t in tokens[window.loss_from : end]]
    prompt = [t.removeprefix("item_") for t in tokens[: window.loss_from] if t.startswith("item_")]
    return page, prompt


def reverse_rank_hits(draws: int) -> float:
    """Share of pairs (x, y), always rated x then y, whose x is the first slot's top item (y
    excluded) for a prompt of y, after meta pre-training with ``draws`` shuffled windows."""
    pairs = [(f"x{k}", f"y{k}") for k in range(10)]
    users = [f"u{n}" for n in range(40)]
    sequences = {u: list(pairs[n % 10]) for n, u in enumerate(users)}
    vocab = build_vocabulary(users, [i for p in pairs for i in p], ["c0"])
    model = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=2, n_head=2), seed=0)
    meta = meta_examples(vocab, {}, sequences, 1, 10, shuffled_draws=draws, seed=0)
    settings = SupervisedSettings(meta_epochs=30, **FAST)
    meta_pretrain(model, RatingHead(32), meta, [], settings, TrainingCurve(),
                  vocab.tokenizer.pad_token_id)  # fmt: skip
    model.eval()
    scores = first_slot_scores(model, vocab, [(u, [sequences[u][1]]) for u in users])
    hits = 0
    for u, row in zip(users, scores, strict=True):
        x, y = sequences[u]
        row[vocab.items.index(y)] = -math.inf
        hits += vocab.items[int(row.argmax())] == x
    return hits / len(users)


def test_shuffled_windows_teach_what_goes_with_an_item_whichever_came_first() -> None:
    # Next-page windows only ever predict y from x; a prompt of y then knows nothing of x.
    without, with_shuffled = reverse_rank_hits(0), reverse_rank_hits(4)
    assert with_shuffled >= 0.9, f"x found for {with_shuffled:.2f} of the prompts"
    assert without <= 0.3, f"x found for {without:.2f} of the prompts without shuffled windows"


def test_supervised_stages_stop_on_validation_only_where_a_snapshot_holds_some() -> None:
    from learner.stages import validation_scorer
    from streams.derive.training_snapshot import TrainingSnapshot

    vocab, _, _ = toy_world()
    # No validation items: every score would be 0, and keeping the best would keep epoch one.
    assert validation_scorer(vocab, TrainingSnapshot(catalogue={}, validation={"u0": ()})) is None
    held_out = TrainingSnapshot(catalogue={}, validation={"u0": ("i1",)})
    assert callable(validation_scorer(vocab, held_out))
