"""Records as a readable terminal table, or as JSON, NDJSON or CSV for pipes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import Any, TextIO

from receiver.record_lines import LINE_FORMATS, RecordLines

# Columns shown in a table, per kind of record (all fields go to json, ndjson and csv).
TABLES: dict[str, Sequence[str]] = {
    "events": (
        "id",
        "event_time",
        "myid",
        "event_type",
        "call_flow",
        "call_status",
        "caller_id_num",
        "called_number",
        "duration",
        "call_id",
    ),
    "calls": (
        "started_at",
        "direction",
        "status",
        "external_number",
        "answered_by",
        "ring_seconds",
        "talk_seconds",
        "extensions",
        "call_id",
        "source",
    ),
    "missed": (
        "number",
        "missed",
        "last_missed_at",
        "handled",
        "handled_by",
        "handled_at",
        "recall_seconds",
    ),
    "deliveries": (
        "id",
        "created_at",
        "type",
        "status",
        "attempts",
        "last_status",
        "next_try_at",
        "destination",
        "last_error",
    ),
    "extensions": (
        "extension",
        "period",
        "calls",
        "answered",
        "missed",
        "avg_ring_seconds",
        "total_talk_seconds",
        "avg_talk_seconds",
    ),
}


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


class Output:
    """Writes records as they come (ndjson, csv) or all at the end (table, json)."""

    def __init__(self, fmt: str, kind: str, out: TextIO) -> None:
        self.fmt, self.kind, self.out = fmt, kind, out
        self.rows: list[dict[str, Any]] = []
        self.lines = RecordLines(fmt, out) if fmt in LINE_FORMATS else None
        self.count = 0

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        if self.lines is not None:
            self.lines.add(record)
        else:
            self.rows.append(record)

    def close(self) -> None:
        if self.fmt == "json":
            json.dump(self.rows, self.out, ensure_ascii=False, indent=2)
            self.out.write("\n")
        elif self.fmt == "table":
            self.table()

    def table(self) -> None:
        rows = self.rows
        columns = [c for c in TABLES[self.kind] if any(c in row for row in rows)]
        columns = columns or list(TABLES[self.kind])
        table = [[cell(row.get(c)) for c in columns] for row in rows]
        widths = [max([len(c), *(len(r[i]) for r in table)]) for i, c in enumerate(columns)]
        limit = shutil.get_terminal_size((200, 20)).columns
        for line in [columns, ["-" * w for w in widths], *table]:
            text = "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True))
            self.out.write(text.rstrip()[:limit] + "\n")
        if not rows:
            self.out.write("(nothing matched)\n")
