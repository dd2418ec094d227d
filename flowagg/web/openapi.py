"""The OpenAPI 3.1 description of the whole HTTP API, served at ``/openapi.json``.

The tests check real responses against it and fuzz the API from it, so it cannot drift.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from flowagg.schema import INT64_MAX
from flowagg.store.base import MAX_KEY_LENGTH
from flowagg.web import openapi_queries
from flowagg.web.flows import WINDOW_HEADER

_NAME = {"type": "string", "minLength": 1}
_COUNT = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}


def _json(schema: dict, description: str, headers: dict | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        response["headers"] = headers
    return response


def _with_csv(response: dict[str, Any], description: str) -> dict[str, Any]:
    """``response`` also offered as text/csv (format=csv or Accept: text/csv)."""
    response["content"]["text/csv"] = {"schema": {"type": "string", "description": description}}
    return response


def _error(description: str, retry_after: bool = False) -> dict[str, Any]:
    headers = {"Retry-After": {"schema": {"type": "string"}, "required": True}}
    return _json(
        {"$ref": "#/components/schemas/Error"}, description, headers if retry_after else None
    )


# Paths anyone may call, tokens or not.
OPEN_PATHS = ("/healthz", "/readyz")


def _with_security(document: dict[str, Any]) -> dict[str, Any]:
    """Bearer tokens on every operation but the open ones: optional (``{}``) since they are
    required only with FLOWAGG_TOKENS_FILE; 401 without a valid one, 403 for a role without
    the permission."""
    document["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "A token of FLOWAGG_TOKENS_FILE (python -m flowagg token NAME ROLE)",
        }
    }
    document["security"] = [{"bearer": []}, {}]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path in OPEN_PATHS:
                operation["security"] = [{}]
                continue
            responses = operation["responses"]
            responses.setdefault(
                "401", _error("A token is required (FLOWAGG_TOKENS_FILE) and none valid was given")
            )
            responses.setdefault("403", _error("The token's role lacks the permission"))
    return document


@cache
def openapi_document() -> dict[str, Any]:
    return _with_security(_document())


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flowagg",
            "version": "1.0.0",
            "description": "Aggregates network flow records per hour. Reads are strongly"
            " consistent: a POST answered before a GET is sent is counted in that GET.",
        },
        "paths": {
            "/flows": {
                "post": {
                    "summary": "Add a batch of flow records (all or none)",
                    "operationId": "postFlows",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "description": "With a data directory: a retry with a key already"
                            " applied answers the original result and is not applied again",
                            "schema": {
                                "type": "string",
                                "pattern": f"^[!-~]{{1,{MAX_KEY_LENGTH}}}$",
                            },
                        },
                    ],
                    "requestBody": {
                        "required": True,
                        "description": "The JSON array as is (no Content-Encoding, or"
                        " identity) or compressed with Content-Encoding: gzip (or x-gzip),"
                        " whose decompressed size FLOWAGG_MAX_BODY_BYTES bounds as it is"
                        " decompressed; any other Content-Encoding is 415",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/FlowRecord"},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["accepted"],
                                "properties": {"accepted": {"type": "integer", "minimum": 0}},
                            },
                            "Every record accepted",
                            {
                                WINDOW_HEADER: {
                                    "description": "Seconds an Idempotency-Key is kept after"
                                    " its request was applied; 0: keys are not kept (in"
                                    " memory), so a retry may count twice",
                                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                                }
                            },
                        ),
                        "400": _error(
                            "Malformed JSON, an invalid record, an hour outside the window the"
                            " server's clock allows, a name over FLOWAGG_MAX_NAME_BYTES, or"
                            " a body that is not the gzip stream its Content-Encoding says"
                        ),
                        "403": _error(
                            "The token's role lacks write, or the Origin header names another"
                            " site (not the service's own origin nor FLOWAGG_ALLOWED_ORIGINS)"
                        ),
                        "413": _error(
                            "Body larger than FLOWAGG_MAX_BODY_BYTES, as sent or, with"
                            " Content-Encoding gzip, once decompressed (decided while"
                            " decompressing, after at most that many bytes)"
                        ),
                        "415": _json(
                            {"$ref": "#/components/schemas/Error"},
                            "A Content-Encoding other than gzip or identity",
                            {"Accept-Encoding": {"schema": {"type": "string"}, "required": True}},
                        ),
                        "422": _error("Idempotency-Key already used for other flows"),
                        "429": _error(
                            "The request would add key-hours past FLOWAGG_MAX_KEYS, or take the"
                            " tables' memory past FLOWAGG_MAX_MEMORY_BYTES (the error names the"
                            " limit, its value and what is held); nothing applied. No"
                            " Retry-After: retrying does not help until hours expire, while"
                            " POSTs that only add to key-hours already held are accepted"
                        ),
                        "503": _error(
                            "Buffers full past the enqueue timeout, or a body of 1 MiB or more"
                            " waited 30 s for its turn among the large bodies being decoded;"
                            " nothing applied",
                            True,
                        ),
                    },
                },
                "get": {
                    "summary": "Totals of one hour, one record per (src_app, dest_app, vpc_id)",
                    "operationId": "getFlows",
                    "parameters": [
                        {
                            "name": "hour",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                        {"$ref": "#/components/parameters/format"},
                    ],
                    "responses": {
                        "200": _with_csv(
                            _json(
                                {
                                    "type": "array",
                                    "items": {"$ref": "#/components/schemas/FlowTotal"},
                                },
                                "Rows in order of first appearance; [] for an hour without data",
                            ),
                            "A header row (src_app, dest_app, vpc_id, bytes_tx, bytes_rx, hour),"
                            " then the rows",
                        ),
                        "400": _error("Missing or invalid hour, or an unknown format"),
                        "503": _error("The hour's partition did not catch up in time", True),
                    },
                },
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "healthz",
                    "responses": {
                        "200": _json(
                            {"$ref": "#/components/schemas/Status"},
                            "Alive",
                            {
                                WINDOW_HEADER: {
                                    "description": "As on POST /flows: seconds an"
                                    " Idempotency-Key is kept, 0 for not kept",
                                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                                    "required": True,
                                }
                            },
                        )
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: drainers alive, buffers below the watermark",
                    "operationId": "readyz",
                    "responses": {
                        "200": _json({"$ref": "#/components/schemas/Status"}, "Ready"),
                        "503": _json({"$ref": "#/components/schemas/Status"}, "Not ready"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "operationId": "metrics",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
                }
            },
            **openapi_queries.paths(),
        },
        "components": {
            "parameters": openapi_queries.PARAMETERS,
            "schemas": {
                **openapi_queries.schemas(),
                "FlowRecord": {
                    "type": "object",
                    "required": ["src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour"],
                    "properties": {
                        "src_app": _NAME,
                        "dest_app": _NAME,
                        "vpc_id": _NAME,
                        "bytes_tx": _COUNT,
                        "bytes_rx": _COUNT,
                        "hour": _COUNT,
                    },
                },
                "FlowTotal": {
                    "description": "Summed counters; exact at any size (may exceed 64 bits)",
                    "type": "object",
                    "required": ["src_app", "dest_app", "vpc_id", "bytes_tx", "bytes_rx", "hour"],
                    "additionalProperties": False,
                    "properties": {
                        "src_app": _NAME,
                        "dest_app": _NAME,
                        "vpc_id": _NAME,
                        "bytes_tx": {"type": "integer", "minimum": 0},
                        "bytes_rx": {"type": "integer", "minimum": 0},
                        "hour": _COUNT,
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "additionalProperties": False,
                    "properties": {"error": {"type": "string", "minLength": 1}},
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"enum": ["ok", "ready", "unready"]},
                        "failed": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    }
