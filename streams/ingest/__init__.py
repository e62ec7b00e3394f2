"""Ingestion: Kafka topics and producers, the ingest worker that fills the store, imports."""
