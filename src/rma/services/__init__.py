"""Service implementations, one module each, registered in an explicit map by catalogue name."""

from __future__ import annotations

from rma.services.base import Context, Launch, ServiceDriver
from rma.services.chroma import Chroma
from rma.services.coordinator import Coordinator
from rma.services.document_processing import DocumentProcessing
from rma.services.edge_proxy import EdgeProxy
from rma.services.llm_inference import LlmInference
from rma.services.load_balancer import LoadBalancer
from rma.services.minio import Minio
from rma.services.neo4j import Neo4j
from rma.services.ner_extraction import NerExtraction
from rma.services.notes_coa import NotesCoa
from rma.services.postgres import Postgres
from rma.services.rag_embeddings import RagEmbeddings
from rma.services.redis import Redis
from rma.services.vision_ocr import VisionOcr

DRIVERS: dict[str, ServiceDriver] = {
    driver.name: driver for driver in (
        Chroma(), Redis(), Postgres(), Minio(), Neo4j(), Coordinator(), EdgeProxy(), LoadBalancer()
    ) + (
        LlmInference(), VisionOcr(), RagEmbeddings(),  # tier 1
    ) + (
        NerExtraction(), DocumentProcessing(), NotesCoa(),  # tier 2
    )
}

__all__ = ["DRIVERS", "Context", "Launch", "ServiceDriver"]
