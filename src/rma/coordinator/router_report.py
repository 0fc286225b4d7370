"""`POST /api/admin/router-report` as the coordinator takes it: a router's `TrafficReport`, checked."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rma import catalog
from rma.protocol import Count
from rma.traffic_report import BUCKETS, ServiceFigures, TrafficReport

MAX_INTERVAL_S = 3600.0  # the history's window: counts from further back would fall out of it anyway


class FiguresBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency: Annotated[list[Count], Field(min_length=BUCKETS, max_length=BUCKETS)]
    errors: Count = 0

    @model_validator(mode="after")
    def _errors_are_requests(self) -> FiguresBody:
        if self.errors > sum(self.latency):
            raise ValueError("more errors than requests")
        return self


class ReportBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    interval_s: Annotated[float, Field(ge=0, le=MAX_INTERVAL_S, allow_inf_nan=False)]
    services: Annotated[dict[str, FiguresBody], Field(max_length=len(catalog.SERVICES))]

    @model_validator(mode="after")
    def _known_services(self) -> ReportBody:
        unknown = sorted(set(self.services) - set(catalog.BY_NAME))
        if unknown:
            raise ValueError(f"not in the catalogue: {', '.join(unknown)[:200]}")
        return self

    def report(self) -> TrafficReport:
        return TrafficReport(self.interval_s, {name: ServiceFigures(tuple(f.latency), f.errors)
                                               for name, f in self.services.items()})
