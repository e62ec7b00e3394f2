"""The simulated users' choice model: how a user with known tastes reacts to a page.

A position-based click model (examination x attraction, as in Craswell et al. 2008) over a
utility that the user's hidden tastes define; purchases follow clicks within a budget.

* utility   s(u, i) = w_cat * log(C * a_u[c_i]) + w_quality * q_i - w_price * log+(p_i / b_u)
  (a_u: the user's category affinities, summing to 1 over C categories; q_i: the item's quality;
  p_i its price; b_u the user's price point; log+ = max(0, log): only dearer items put off);
* examined  theta_k = k ** -eta at position k (1-based);
* clicked   P(click | shown at k) = theta_k * sigmoid(s + click_bias), so a page's expected
            clicks are the sum of that over its slots;
* bought    P(buy | clicked) = sigmoid(s + buy_bias), if the price fits the session's budget left;
* rated     r = 1 + round(4 * sigmoid(s + rating_bias)) for the bootstrap history's ratings.

Every function is pure: the simulator draws the random numbers and passes them in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def sigmoid(x: float) -> float:
    """sigmoid(x) = 1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + math.exp(-x))


def utility(
    affinity: float,
    categories: int,
    quality: float,
    price: float,
    price_point: float,
    w_cat: float,
    w_quality: float,
    w_price: float,
) -> float:
    """s = w_cat * log(C * a) + w_quality * q - w_price * max(0, log(p / b))."""
    taste = w_cat * math.log(categories * affinity)
    dearer = max(0.0, math.log(price / price_point)) if price > 0 else 0.0
    return taste + w_quality * quality - w_price * dearer


def utilities(
    affinities: np.ndarray,
    item_categories: np.ndarray,
    quality: np.ndarray,
    prices: np.ndarray,
    price_point: float,
    w_cat: float,
    w_quality: float,
    w_price: float,
) -> np.ndarray:
    """``utility`` for every item at once (the same formula, vectorised)."""
    taste = w_cat * np.log(len(affinities) * affinities[item_categories])
    dearer = np.maximum(0.0, np.log(prices / price_point))
    return taste + w_quality * quality - w_price * dearer


def examination(position: int, eta: float) -> float:
    """theta_k = k ** -eta: the chance a user looks at the item in slot k (1-based)."""
    return float(position) ** -eta


def click_probability(s: float, position: int, eta: float, click_bias: float) -> float:
    """P(click) = theta_k * sigmoid(s + click_bias)."""
    return examination(position, eta) * sigmoid(s + click_bias)


def expected_clicks(s: Sequence[float | None], eta: float, click_bias: float) -> float:
    """E[clicks on a page] = sum_k theta_k sigmoid(s_k + click_bias), s_k the utility in slot k
    (None: an item the world does not know, which draws no click but takes its slot)."""
    return sum(
        click_probability(x, k, eta, click_bias) for k, x in enumerate(s, start=1) if x is not None
    )


def purchase_probability(s: float, price: float, budget_left: float, buy_bias: float) -> float:
    """P(buy | click) = sigmoid(s + buy_bias) when price <= budget left, else 0."""
    return sigmoid(s + buy_bias) if price <= budget_left else 0.0


def rating_of(s: float, rating_bias: float) -> int:
    """r = 1 + round(4 * sigmoid(s + rating_bias)), in 1..5."""
    return 1 + round(4 * sigmoid(s + rating_bias))
