"""The learner: PageLLM's supervised stages, reward model and PPO on Ray (see its issue)."""
