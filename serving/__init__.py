"""Serving: whole pages from the live model versions on Ray Serve, routed by A/B variant, every
page sent back to Kafka as an impression (see README, "Serving")."""
