"""The learner: PageLLM's supervised stages, reward model, PPO and offline evaluation."""
