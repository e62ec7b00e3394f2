"""The event store: immutable Parquet files of the ledger, and the DuckDB views over them.

The ground floor of ``streams``: ingest and derive stand on it; it imports neither.
"""
