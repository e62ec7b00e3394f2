"""The event backbone: Kafka producer and topics, the faust ingest worker, the event store."""
