"""RMA pool: a coordinator, a universal worker and routing for volunteer-run services."""

__version__ = "0.1.0"
