"""The control plane: registry, placement on every beat, health timers, auth and metrics."""
