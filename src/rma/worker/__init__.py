"""The universal worker: detection, registration, heartbeats, and supervision of assigned services."""
