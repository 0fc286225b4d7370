"""Which engines this worker can start, and which stores' data it holds.

An engine is reported only when this project implements its service (a module in
`rma.services`) and the machine has its modules and binaries, so placement never assigns
what cannot start here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rma.catalog import SERVICES
from rma.services import DRIVERS, ServiceDriver
from rma.worker.probe import Probe


def runnable_engines(probe: Probe, drivers: Mapping[str, ServiceDriver] = DRIVERS,
                     env: Mapping[str, str] | None = None) -> list[str]:
    """`env` is what the services get (MODEL_NAME): a driver may need a model file it names."""
    return sorted(name for engines in engines_by_service(probe, drivers, env or {}).values() for name in engines)


def engines_by_service(probe: Probe, drivers: Mapping[str, ServiceDriver],
                       env: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """Each implemented service → the engines this machine can run it with, best first."""
    found: dict[str, tuple[str, ...]] = {}
    for name, driver in drivers.items():
        usable = tuple(engine.name for engine in map(driver.service.engine, driver.engines)
                       if all(map(probe.has_module, engine.modules)) and all(map(probe.has_binary, engine.binaries))
                       and driver.missing(engine.name, env) is None)
        if usable:
            found[name] = usable
    return found


def service_dir(data_dir: Path, service: str) -> Path:
    return data_dir / "services" / service


def data_services(data_dir: Path) -> list[str]:
    """Stateful services with data in this worker's data dir: they should come back here."""
    held = []
    for service in SERVICES:
        folder = service_dir(data_dir, service.name)
        if service.stateful and folder.is_dir() and any(folder.iterdir()):
            held.append(service.name)
    return held
