"""Records as NDJSON lines or CSV rows: one writer for the API's streams and the command line.

(An event export with its raw requests is event.event_lines(), made from stored rows.)
"""

from __future__ import annotations

import csv
import json
from typing import Any, TextIO

LINE_FORMATS = ("ndjson", "csv")


def csv_cell(value: Any) -> Any:
    """A record's value in a CSV cell: a list or an object as its JSON."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value


class RecordLines:
    """Writes records to `out` as they come: NDJSON lines, or CSV rows under a header taken
    from the first record's fields."""

    def __init__(self, fmt: str, out: TextIO) -> None:
        if fmt not in LINE_FORMATS:
            raise ValueError(f"{fmt!r} is not one of {', '.join(LINE_FORMATS)}")
        self.fmt, self.out = fmt, out
        self.csv: csv.DictWriter[str] | None = None

    def add(self, record: dict[str, Any]) -> None:
        if self.fmt == "ndjson":
            self.out.write(json.dumps(record, ensure_ascii=False))
            self.out.write("\n")
            return
        if self.csv is None:
            self.csv = csv.DictWriter(self.out, fieldnames=list(record), extrasaction="ignore")
            self.csv.writeheader()
        self.csv.writerow({key: csv_cell(value) for key, value in record.items()})
