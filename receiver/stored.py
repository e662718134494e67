"""An event's row as the database stores it, and how a row is read whatever it holds.

SQLite keeps whatever a statement stores, whatever a column's declared type: a file edited by
hand or damaged may hold text in an integer column, a blob in a text one, JSON that does not
parse, a raw request that does not unpack. Reads check the types of a row's values first
(kinds_fit), and a row that fails, or whose record then fails (READ_FAILURES), is read value
by value (readable_row): each value no receiver stores replaced, and named.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import orjson

from receiver.packing import AS_RECEIVED, BLOBS, unpack

# An event as the database stores it: its values in this order (the events table's columns,
# selected as EVENT_COLUMNS in receiver/store/schema.py). extra and flags are JSON text; the
# raw query and body are kept as raw_packing says (receiver/packing.py).
STORED_FIELDS = (
    "id", "myid", "event_type", "event_time_us", "order_us", "call_id", "sub_call_id",
    "call_api_id", "callback_id", "caller_id_num", "caller_id_name", "called_did",
    "called_number", "caller_extension", "caller_extension_id", "called_extension",
    "called_extension_id", "call_status", "call_flow", "duration_us", "rec_id", "transferred",
    "bridged", "diversion", "remote_number", "extra", "flags", "received_at_us", "source",
    "raw_method", "raw_query", "raw_body", "raw_content_type", "raw_packing", "duplicates",
)  # fmt: skip


# The kinds of the columns, as this receiver writes them.
TEXT = ("myid", "event_type", "source", "raw_method")
OPTIONAL_TEXT = (
    "call_id", "sub_call_id", "call_api_id", "callback_id", "caller_id_num", "caller_id_name",
    "called_did", "called_number", "caller_extension", "called_extension", "call_status",
    "call_flow", "rec_id", "diversion", "remote_number", "raw_content_type",
)  # fmt: skip
COUNTS = ("received_at_us", "duplicates")  # 0 in their place where damaged
OPTIONAL_INTEGERS = (
    "id",  # none: an event not stored yet (event_json)
    "event_time_us", "caller_extension_id", "called_extension_id", "duration_us",
)  # fmt: skip
COLUMN = {name: index for index, name in enumerate(STORED_FIELDS)}
# What making a record of values not of their columns' kinds raises.
READ_FAILURES = (TypeError, ValueError, AttributeError, OverflowError, LookupError)
NONE = type(None)
OPTIONAL_INTEGER = frozenset({int, NONE})
# The booleans as stored (PostgreSQL's come as True and False, equal to 1 and 0).
TRANSFERRED = {0: False, 1: True}
BRIDGED = {None: None, 0: False, 1: True}
# The types each column's value may have (or a subclass: an enum of text is text); the value
# itself is checked where the record is made.
COLUMN_TYPES: dict[str, set[type]] = {
    **{name: {str} for name in TEXT},
    **{name: {str, NONE} for name in OPTIONAL_TEXT},
    **{name: {int} for name in (*COUNTS, "raw_packing")},
    **{name: {int, NONE} for name in OPTIONAL_INTEGERS},
    "transferred": {int},
    "bridged": {int, NONE},
    "extra": {str},
    "flags": {str},
    "raw_query": {bytes},
    "raw_body": {bytes},
    "order_us": {int, float, str, bytes, NONE},  # not shown; it orders the events
}
assert set(COLUMN_TYPES) == set(STORED_FIELDS)


def kinds_fit(row: Sequence[Any]) -> bool:
    """Whether each of the row's values has a type its column may hold."""
    return types_fit(tuple(map(type, row)))


@functools.lru_cache(maxsize=4096)  # a few dozen sets of types occur
def types_fit(types: tuple[type, ...]) -> bool:
    return len(types) == len(STORED_FIELDS) and all(
        issubclass(kind, tuple(COLUMN_TYPES[name]))
        for name, kind in zip(STORED_FIELDS, types, strict=True)
    )


def readable_row(row: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """The row with each value that is not of its column's kind replaced by none, an empty
    value or 0, and the names of the columns replaced. The raw query and body come unpacked
    (raw_packing AS_RECEIVED); where they do not unpack, as stored, and named."""
    values = list(row)
    damaged: list[str] = []

    def replace(name: str, value: Any) -> None:
        values[COLUMN[name]] = value
        damaged.append(name)

    for name in TEXT:
        if not isinstance(values[COLUMN[name]], str):
            replace(name, as_text(values[COLUMN[name]]) or "")
    for name in OPTIONAL_TEXT:
        if not isinstance(values[COLUMN[name]], str | None):
            replace(name, as_text(values[COLUMN[name]]))
    for name in COUNTS:
        if not isinstance(values[COLUMN[name]], int):
            replace(name, 0)
    for name in OPTIONAL_INTEGERS:
        if not isinstance(values[COLUMN[name]], int | None):
            replace(name, None)
    if values[COLUMN["transferred"]] not in (0, 1):
        replace("transferred", 0)
    if values[COLUMN["bridged"]] not in (None, 0, 1):
        replace("bridged", None)
    extra, flags = values[COLUMN["extra"]], values[COLUMN["flags"]]
    if extra != "{}" and not isinstance(json_value(extra), dict):  # most events have "{}"
        replace("extra", "{}")
    if flags != "[]" and not is_list_of_text(json_value(flags)):
        replace("flags", "[]")
    packing = values[COLUMN["raw_packing"]]
    for name in ("raw_query", "raw_body"):
        stored = values[COLUMN[name]]
        try:
            values[COLUMN[name]] = unpack(stored, packing)
        except READ_FAILURES:  # kept as stored: all there is to see of it
            replace(name, as_bytes(stored))
    values[COLUMN["raw_packing"]] = AS_RECEIVED
    return values, damaged


def json_object(text: str) -> dict[str, Any]:
    """A stored JSON object (extra). Raises TypeError or ValueError where it is none."""
    value = orjson.loads(text)  # strict JSON: no NaN, which the JSON pages could not write
    if type(value) is not dict:
        raise TypeError("not a JSON object")
    return value


def json_texts(text: str) -> list[str]:
    """A stored JSON list of text (flags). Raises TypeError or ValueError where it is none."""
    value = orjson.loads(text)
    if not is_list_of_text(value):
        raise TypeError("not a JSON list of text")
    return value  # type: ignore[no-any-return]


def json_value(text: Any) -> Any:
    """The value of stored JSON text (strict: no NaN), or None where it is not JSON."""
    try:
        return orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return None


def is_list_of_text(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def as_text(value: Any) -> str | None:
    """Bytes where text belongs, as text (U+FFFD for each run that is not UTF-8); else none."""
    if isinstance(value, BLOBS):
        return bytes(value).decode("utf-8", "replace")
    return None


def as_bytes(value: Any) -> bytes:
    """A stored value as bytes: blobs as they are, anything else as its text in UTF-8."""
    if isinstance(value, BLOBS):
        return bytes(value)
    return b"" if value is None else str(value).encode()


def text_or_none(value: Any) -> str | None:
    """A stored text value as text, whatever it holds: a blob decoded (U+FFFD for what is not
    UTF-8), a number as its digits."""
    if value is None or isinstance(value, str):
        return value
    return as_text(value) if isinstance(value, BLOBS) else str(value)


def integer_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def number_or_none(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) else None


class Kind(NamedTuple):
    """What a value of a report may be, and how one that is not is read (RowKinds)."""

    types: tuple[type, ...]
    read: Callable[[Any], Any]


TEXT_VALUE = Kind((str, NONE), text_or_none)
INTEGER_VALUE = Kind((int, NONE), integer_or_none)
NUMBER_VALUE = Kind((int, float, NONE), number_or_none)


class RowKinds:
    """The kinds of the values of a report's rows, on the calls and legs (which are built from
    the events, and read as built)."""

    def __init__(self, *kinds: Kind) -> None:
        self.kinds = kinds
        # whether a row of these types fits: a few sets of types occur, each looked up once
        self.fit: dict[tuple[type, ...], bool] = {}

    def readable(self, row: Sequence[Any]) -> Sequence[Any]:
        """The row, each value of its kind: where a table was edited by hand or damaged, text
        read as text_or_none() does and anything else not of its kind as none, so that no
        report fails. A row whose values are all of their kinds, nearly every one, is the row
        itself."""
        types = tuple(map(type, row))
        fit = self.fit.get(types)
        if fit is None:
            fit = len(types) == len(self.kinds) and all(
                found in kind.types for found, kind in zip(types, self.kinds, strict=True)
            )
            if len(self.fit) < 4096:
                self.fit[types] = fit
        if fit:
            return row
        return tuple(kind.read(value) for value, kind in zip(row, self.kinds, strict=True))
