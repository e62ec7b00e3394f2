"""A/B testing: bucketing and significance over the event store (see its issue)."""
