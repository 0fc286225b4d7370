"""rag-embeddings as the worker starts it: the real model on CPU, the official `openai` client, bad input."""

from __future__ import annotations

import math
from collections.abc import Iterator

import httpx
import openai
import pytest

from services.driven import driven_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Healthy only once the model is loaded: 503 with a JSON reason before."""

    def loading(answer: httpx.Response) -> None:
        assert answer.status_code == 503 and "loading" in answer.json()["reason"]

    with driven_service("rag-embeddings", tmp_path_factory.mktemp("embeddings"), "/health", 90,
                        {"OMP_NUM_THREADS": "1"}, engine="sentence-transformers", while_loading=loading) as url:
        yield url


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_openai_client_gets_embeddings_that_rank_paraphrases_closer(service: str) -> None:
    client = openai.OpenAI(base_url=f"{service}/v1", api_key="unused")
    texts = ["How do I pay my council tax arrears?", "What is the way to settle overdue council tax?",
             "The cat sat on the warm windowsill."]
    answer = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64, the client's default
    vectors = [item.embedding for item in answer.data]
    assert [item.index for item in answer.data] == [0, 1, 2] and len(vectors[0]) == 384
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.3
    assert answer.model == "all-MiniLM-L6-v2" and answer.usage.prompt_tokens > 10
    single = client.embeddings.create(model="m", input=texts[0], encoding_format="float")
    assert cosine(single.data[0].embedding, vectors[0]) > 0.999
    assert [m.id for m in client.models.list().data] == ["all-MiniLM-L6-v2"]


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"input": ""}, 400, "empty"),
    ({"input": []}, 400, "empty"),
    ({"input": [1, 2, 3]}, 400, "input"),
    ({"input": 42}, 400, "input"),
    ({"model": "m"}, 400, "input"),
    ({"input": ["x"] * 513}, 400, "at most 512"),
    ({"input": "word " * 1000}, 400, "tokens"),
    ({"input": "x" * 20_001}, 400, "characters"),
    ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"input": "x", "dimensions": 7}, 400, "384"),
])
def test_bad_input_gets_a_4xx_json_error_and_the_service_stays_up(service: str, body: object, status: int,
                                                                  says: str) -> None:
    answer = httpx.post(f"{service}/v1/embeddings", json=body, timeout=30)
    assert answer.status_code == status and says in answer.json()["error"]["message"]
    assert httpx.get(f"{service}/health", timeout=5).status_code == 200


def test_malformed_json_and_oversized_bodies_are_refused(service: str) -> None:
    broken = httpx.post(f"{service}/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "error" in broken.json()
    huge = httpx.post(f"{service}/v1/embeddings", content=b" " * (9 * 2**20),
                      headers={"content-type": "application/json"}, timeout=30)
    assert huge.status_code == 413
