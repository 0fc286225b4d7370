"""The mesh: a Nebula overlay joining every machine of the pool, its CA at the coordinator."""
