"""The ablations of section 5 as one setting: which reward heads PPO optimises, if any."""

from __future__ import annotations

from typing import Literal

Ablation = Literal["sft", "page", "item", "both"]
ABLATIONS: tuple[Ablation, ...] = ("sft", "page", "item", "both")
RewardHeads = Literal["both", "page", "item", "none"]
# sft: the fine-tuned reference policy, no reward; the others: PPO on R_c, R_f or R_c + R_f.
HEADS_OF: dict[Ablation, RewardHeads] = {
    "sft": "none",
    "page": "page",
    "item": "item",
    "both": "both",
}
