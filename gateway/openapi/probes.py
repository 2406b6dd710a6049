"""The probes in the OpenAPI document: `/healthz` and `/readyz`, plain aiohttp handlers of `gateway.app`
rather than RPCs, so written here by hand (tagged `Probes`, no security), and the `Readiness` schema of
the `/readyz` answer. `gateway.openapi.document` adds them to the paths derived from the routes.
"""

from __future__ import annotations

from typing import Any

from gateway.openapi.schemas import _ref


def probe_paths() -> dict[str, Any]:
    """`/healthz` and `/readyz` (plain aiohttp handlers of `gateway.app`, not RPCs)."""
    return {
        "/healthz": {
            "get": {
                "operationId": "Probes_Healthz",
                "tags": ["Probes"],
                "security": [],
                "summary": "Liveness: the gateway process serves HTTP.",
                "responses": {
                    "200": {
                        "description": "Alive.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status"],
                                    "additionalProperties": False,
                                    "properties": {"status": {"type": "string", "enum": ["ok"]}},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "Probes_Readyz",
                "tags": ["Probes"],
                "security": [],
                "summary": "Readiness: every backend service reports SERVING on its gRPC health check.",
                "responses": {
                    "200": {
                        "description": "Every backend is SERVING.",
                        "content": {"application/json": {"schema": _ref("Readiness")}},
                    },
                    "503": {
                        "description": "Some backend is not SERVING; `not_ready` names them.",
                        "content": {"application/json": {"schema": _ref("Readiness")}},
                    },
                },
            }
        },
    }


def readiness_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "services", "not_ready"],
        "additionalProperties": False,
        "description": "Health of the gateway's backends.",
        "properties": {
            "status": {"type": "string", "enum": ["ready", "not_ready"]},
            "services": {
                "type": "object",
                "description": "Service -> its health status (`SERVING`, "
                "`NOT_SERVING`, or the gRPC code of a failed check).",
                "additionalProperties": {"type": "string"},
            },
            "not_ready": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Services that are not SERVING.",
            },
        },
    }
