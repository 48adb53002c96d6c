"""Structured, quiet-by-default logging: one JSON object per line on stderr."""

from __future__ import annotations

import json
import logging
import os
import sys

CONTEXT_KEYS = ("diagnosis_id", "stage", "node")  # carried on a record via `extra=log_context(...)`


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        for key in CONTEXT_KEYS:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def log_context(*, diagnosis_id: str | None = None, stage: str | None = None,
                node: str | None = None) -> dict[str, str]:
    """The `extra=` of a log call about a diagnosis: which one, in which stage, on which node
    (what an operator greps a day's logs for)."""
    fields = {"diagnosis_id": diagnosis_id, "stage": stage, "node": node}
    return {key: value for key, value in fields.items() if value is not None}


def setup_logging(level: str | None = None) -> None:
    level = (level or os.environ.get("NETDIAG_LOG_LEVEL", "WARNING")).upper()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("nats").setLevel(max(logging.getLogger().level, logging.ERROR))
