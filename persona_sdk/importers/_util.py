"""Small helpers shared by the JSON importers (errors point at positions)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..errors import ChatFormatError


def shape_error(where: str, position: str, problem: str) -> ChatFormatError:
    """`where`: file; `position`: e.g. "conversation 3, message 17"; `problem`: no data quoted."""
    return ChatFormatError(f"{where}: {position}: {problem}")


def type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def parse_time(value: Any, where: str, position: str, field: str = "time") -> datetime | None:
    """ISO-8601 string (a trailing Z is UTC) or unix seconds -> datetime; None stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise shape_error(where, position, f'"{field}" must be an ISO-8601 string, got a boolean')
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise shape_error(where, position, f'"{field}" is not a valid timestamp') from None
    if not isinstance(value, str):
        raise shape_error(where, position, f'"{field}" must be an ISO-8601 string, got {type_name(value)}')
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise shape_error(where, position, f'"{field}" is not an ISO-8601 date-time') from None
