"""How the platform starts: the local Kafka broker, the demo, the CLI commands that run things."""
