"""The coordinator's HTTP API as typed calls, failing over between coordinators.

Statuses become exception types here and nowhere else. A coordinator that cannot be reached
(connection error, timeout, 5xx) sends the call to the next URL in the list; the one that
answered is tried first next time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from typing import TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from rma.front import client_context
from rma.protocol import HeartbeatRequest, HeartbeatResponse, RegisterRequest, RegisterResponse

log = logging.getLogger(__name__)
Answer = TypeVar("Answer", bound=BaseModel)


class CoordinatorError(Exception):
    """Any failure to get an answer the worker can use."""


class Unreachable(CoordinatorError):
    """No coordinator in the list answered."""


class Rejected(CoordinatorError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"coordinator answered {status}: {detail}")
        self.status = status


class Unauthorized(Rejected):
    """401: the join token or the worker token was refused."""


class UnknownWorker(Rejected):
    """404: the coordinator does not know this worker; register again."""


class IdTaken(Rejected):
    """409: another worker holds this id."""


REJECTIONS: dict[int, type[Rejected]] = {401: Unauthorized, 403: Unauthorized, 404: UnknownWorker, 409: IdTaken}


class CoordinatorClient:
    def __init__(self, urls: tuple[str, ...], join_token: str | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 5.0) -> None:
        self.configured = self.urls = urls
        self.join_token = join_token
        self._current = 0
        self._http = httpx.AsyncClient(transport=transport, timeout=timeout_s, verify=client_context())

    @property
    def url(self) -> str:
        """The coordinator that answered last."""
        return self.urls[self._current]

    def learn(self, replicas: Iterable[str]) -> None:
        """Fail over to the configured coordinators and, after them, the replicas the last answer named."""
        current = self.url
        self.urls = (*self.configured, *(u for u in (r.rstrip("/") for r in replicas) if u not in self.configured))
        self._current = self.urls.index(current) if current in self.urls else 0

    async def aclose(self) -> None:
        await self._http.aclose()

    async def register(self, request: RegisterRequest, worker_token: str | None) -> RegisterResponse:
        headers = {"Authorization": f"Bearer {self.join_token}"} if self.join_token else {}
        if worker_token:
            headers["X-Worker-Token"] = worker_token
        return await self._call("POST", "/api/worker/register", RegisterResponse, request, headers)

    async def heartbeat(self, request: HeartbeatRequest, worker_token: str) -> HeartbeatResponse:
        headers = {"Authorization": f"Bearer {worker_token}"}
        return await self._call("POST", "/api/worker/heartbeat", HeartbeatResponse, request, headers)

    async def watch(self, worker_id: str, worker_token: str, idle_timeout_s: float) -> AsyncIterator[HeartbeatResponse]:
        """Assignments the coordinator pushes as it makes them; ends when the stream drops.

        The coordinator sends an empty line every interval, so `idle_timeout_s` of silence
        means it (or the path to it) is gone.
        """
        url = f"{self.url}/api/worker/watch/{worker_id}"
        timeout = httpx.Timeout(self._http.timeout.connect, read=idle_timeout_s)
        try:
            async with self._http.stream("GET", url, headers={"Authorization": f"Bearer {worker_token}"},
                                         timeout=timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise REJECTIONS.get(response.status_code, Rejected)(response.status_code, response.text[:300])
                async for line in response.aiter_lines():
                    if line.strip():
                        yield HeartbeatResponse.model_validate_json(line)
        except httpx.HTTPError as exc:
            raise Unreachable(f"{url}: {type(exc).__name__} {exc}".strip()) from exc
        except ValidationError as exc:
            raise CoordinatorError(f"{url} sent an unexpected line: {exc}") from exc

    async def unregister(self, worker_id: str, worker_token: str) -> None:
        await self._send("DELETE", f"/api/worker/unregister/{worker_id}", None,
                         {"Authorization": f"Bearer {worker_token}"})

    async def _call(self, method: str, path: str, answer: type[Answer], body: BaseModel,
                    headers: dict[str, str]) -> Answer:
        response = await self._send(method, path, body, headers)
        try:
            return answer.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise CoordinatorError(f"{self.url}{path} answered an unexpected body: {exc}") from exc

    async def _send(self, method: str, path: str, body: BaseModel | None, headers: dict[str, str]) -> httpx.Response:
        errors = []
        count = len(self.urls)
        for step in range(count):
            index = (self._current + step) % count
            url = self.urls[index] + path
            try:
                response = await self._http.request(
                    method, url, headers=headers,
                    json=body.model_dump(mode="json", exclude_none=True) if body is not None else None)
            except httpx.HTTPError as exc:
                errors.append(f"{url}: {type(exc).__name__} {exc}".strip())
                continue
            if response.status_code >= 500:
                errors.append(f"{url}: {response.status_code}")
                continue
            if index != self._current:
                log.warning("coordinator %s answered; failing over from %s", self.urls[index], self.url)
                self._current = index
            if response.status_code >= 400:
                raise REJECTIONS.get(response.status_code, Rejected)(response.status_code, response.text[:300])
            return response
        raise Unreachable("; ".join(errors))
