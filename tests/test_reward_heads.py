"""Both reward heads learn to rank the chosen list over the rejected one on held-out users."""

from __future__ import annotations

import copy
import random

import torch

from learner.backbone import build_policy
from learner.reward_heads import (
    LabelledPair,
    RewardModel,
    accuracies_by_family,
    bradley_terry_loss,
    bradley_terry_terms,
    combined_reward,
    page_batch,
    pair_accuracies,
    reward_loss_terms,
    scored_pairs,
    train_reward_model,
)
from learner.settings import BackboneSettings, RewardSettings
from learner.training_loop import TrainingCurve
from learner.vocabulary import build_vocabulary

torch.set_num_threads(1)
ITEMS = [f"i{n:02d}" for n in range(40)]
GOOD, BAD = ITEMS[:30], ITEMS[30:]
USERS = [f"u{n}" for n in range(600)]


def toy_pairs(users: list[str], seed: int) -> list[LabelledPair]:
    """Golden lists: five good items in catalogue order. Negatives: bad items (np), or the
    golden list with one adjacent swap (rk)."""
    rng = random.Random(seed)
    pairs = []
    for user in users:
        history = tuple(rng.sample(GOOD, 3))
        golden = tuple(sorted(rng.sample([i for i in GOOD if i not in history], 5)))
        bad = tuple(rng.sample(BAD, 5))
        k = rng.randrange(4)
        swapped = (*golden[:k], golden[k + 1], golden[k], *golden[k + 2 :])
        pairs.append(LabelledPair(user, history, "np", golden, bad))
        pairs.append(LabelledPair(user, history, "rk", golden, swapped))
    return pairs


def test_the_heads_rank_chosen_over_rejected_on_held_out_pairs() -> None:
    vocab = build_vocabulary(USERS, ITEMS, ["c"])
    policy = build_policy(vocab, BackboneSettings(n_embd=48, n_layer=2, n_head=2), seed=0)
    model = RewardModel(copy.deepcopy(policy.transformer), 48)
    train, validation, held_out = (
        toy_pairs(USERS[:420], 1), toy_pairs(USERS[420:480], 2), toy_pairs(USERS[480:], 3)
    )  # fmt: skip
    before = pair_accuracies(model, vocab, held_out)
    curve = TrainingCurve()
    settings = RewardSettings(epochs=20, lr=1e-3, batch_size=16, patience=3)
    train_reward_model(model, vocab, train, validation, settings, curve)
    after = pair_accuracies(model, vocab, held_out)
    # np (bad items) is easy; rk (one adjacent swap of a sorted list) needs the order learnt.
    for family, floor in (("np", 0.9), ("rk", 0.7)):
        for head in ("page", "item"):
            assert after[family][head] >= floor, (family, head, before[family], after[family])
    assert curve.epochs["page_bradley_terry"][-1] < curve.epochs["page_bradley_terry"][0]


def test_page_batch_marks_the_list_entries_and_rewards_combine_by_ablation() -> None:
    vocab = build_vocabulary(["u1"], ITEMS, ["c"])
    batch = page_batch(vocab, [("u1", ["i01"]), ("u1", [])], [["i02", "i03"], ["i04"]])
    tokens = vocab.tokenizer.convert_ids_to_tokens(batch.input_ids[0][batch.entries[0]])
    assert tokens == ["item_i02", "item_i03"]
    assert batch.entries[1].sum() == 1
    page, item = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -1.0])
    assert combined_reward(page, item, "both").tolist() == [1.5, 1.0]
    assert combined_reward(page, item, "item").tolist() == [0.5, -1.0]
    assert combined_reward(page, item, "none").tolist() == [0.0, 0.0]
    # -log sigmoid(0) = log 2
    assert bradley_terry_loss(torch.zeros(3), torch.zeros(3)).item() == torch.log(torch.tensor(2.0))


def test_accuracies_by_family_by_hand() -> None:
    # Rows R_c, R_f; pairs 0 and 2 are np, pair 1 rk.
    chosen = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 1.0]])
    rejected = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, 0.0]])
    assert accuracies_by_family(chosen, rejected, ["np", "rk", "np"]) == {
        "np": {"page": 0.5, "item": 0.5, "both": 0.0},  # sums: 1 vs 1 (a tie), 3 vs 3
        "rk": {"page": 0.0, "item": 1.0, "both": 0.0},  # 1 vs 1: a tie is not a win
    }


def test_scoring_in_batches_gives_the_one_pass_loss() -> None:
    vocab = build_vocabulary(USERS, ITEMS, ["c"])
    policy = build_policy(vocab, BackboneSettings(n_embd=32, n_layer=1, n_head=2), seed=0)
    model = RewardModel(policy.transformer, 32).eval()
    pairs = toy_pairs(USERS[:25], 4)  # 50 pairs: batches of 16, 16, 16 and 2
    chosen, rejected = scored_pairs(model, vocab, pairs, batch_size=16)
    assert chosen.shape == rejected.shape == (2, 50)
    with torch.no_grad():
        one_pass = reward_loss_terms(model, vocab, pairs)
    for name, value in bradley_terry_terms(chosen, rejected).items():
        assert abs(float(value) - float(one_pass[name])) < 1e-5, name
    assert not model.training  # the caller's mode is kept
    assert pair_accuracies(model, vocab, []) == {}
