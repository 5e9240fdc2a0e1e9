"""The API's error: a status, a message and the fields at fault, sent as JSON
`{"error": {"message", "fields"}}` (serve/app.py turns every APIError into one)."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, fields: list[dict] | None = None,
                 headers: dict | None = None):
        self.status, self.message, self.fields, self.headers = status, message, fields or [], headers


def error_response(status: int, message: str, fields=None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "fields": fields or []}}, status_code=status,
                        headers=headers)
