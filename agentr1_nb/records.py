"""Reading the records of a data file defensively: `read_records(path)` and `DataFormatError`.

A data file is a JSON list, an object with a "data" list, or JSON lines (lines end at a line feed only: U+2028,
U+2029 and U+0085 inside strings are text). JSON's non-standard constants (NaN, Infinity), numbers that
overflow a float (1e400) and integers of more than `MAX_INT_DIGITS` digits are refused while the file is
read, with the file and the line. The formats built on these records are in `data.py`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

MAX_INT_DIGITS = 100
"""A JSON integer with more digits is refused when a file is read (no field of these formats needs one)."""
MAX_NUMBER_CHARS = 40
"""A numeric answer becomes its text only when that text is at most this long."""


class DataFormatError(ValueError):
    """A data file does not follow its format; the message names the file, the item and the field."""


class _BadNumber(ValueError):
    """A JSON number or constant these files never hold (raised from the decoder's hooks)."""


def _reject_constant(name: str):
    raise _BadNumber(f"JSON's non-standard constant {name} is not allowed (write the value as a string)")


def _checked_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"the number {text[:40]} is out of range (too large for a float)")
    return value


def _checked_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _BadNumber(f"an integer of {digits} digits (more than {MAX_INT_DIGITS}; write it as a string)")
    return int(text)


_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_float=_checked_float, parse_int=_checked_int
)
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')


def _loads(text: str) -> Any:
    """`json.loads` that refuses NaN / Infinity, floats that overflow and huge integers (`_BadNumber`)."""
    return _DECODER.decode(text)


def _bad_number_line(text: str) -> str:
    """'line N' of the first line that holds a refused number or constant outside strings, else ''."""
    pattern = re.compile(r"(?<![\w.])(-?Infinity|NaN|-?\d[\d.eE+-]*)(?![\w.])")
    for lineno, line in enumerate(text.split("\n"), 1):
        for m in pattern.finditer(_STRING_RE.sub('""', line)):
            try:
                _loads(m.group(1))
            except _BadNumber:
                return f"line {lineno}: "
            except ValueError:
                continue
    return ""


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON list, an object with a "data" list, or JSON lines; each must be a JSON object.

    Errors name the file: missing, a folder, not UTF-8, empty, not valid JSON (with the line and column),
    a refused number (NaN, Infinity, 1e400, a huge integer: with the line), no records, or a record that is
    not an object. JSON lines end at a line feed only: U+2028 / U+2029 / U+0085 are text.
    """
    path = Path(path)
    if path.is_dir():
        raise DataFormatError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        raw = path.read_bytes().decode("utf-8-sig")  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise DataFormatError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); convert it to UTF-8"
        ) from None
    stripped = raw.strip()
    if not stripped:
        raise DataFormatError(f"{path}: the file is empty")
    try:
        records = _parse_records(path, stripped, raw)
    except _BadNumber as e:
        raise DataFormatError(f"{path}: {_bad_number_line(raw)}{e}") from None
    if not records:
        raise DataFormatError(f"{path}: holds no records (an empty list)")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataFormatError(f"{path}: item {i} is a {type(r).__name__}, expected a JSON object")
    return records


def _parse_records(path: Path, stripped: str, raw: str) -> list:
    """The top-level list of a JSON document (an object: itself, or its "data" list), else JSON lines."""
    records: Any = None
    if stripped[0] in "[{":
        try:
            records = _loads(stripped)
        except json.JSONDecodeError as e:
            if stripped[0] == "[":
                ends_early = e.pos >= len(stripped) or e.msg.startswith("Unterminated string")
                cut = "; the file ends too early (truncated?)" if ends_early else ""
                raise DataFormatError(
                    f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}{cut}"
                ) from None
            records = None  # several objects: JSON lines
        except RecursionError:
            raise DataFormatError(f"{path}: not valid JSON (nested too deeply)") from None
        if isinstance(records, dict):  # a one-line JSON-lines file, or an object wrapping a "data" list
            records = records["data"] if isinstance(records.get("data"), list) else [records]
    if records is not None:
        return records
    records = []
    for lineno, line in enumerate(raw.split("\n"), 1):  # not splitlines(): U+2028 etc. may sit in strings
        if not line.strip():
            continue
        try:
            records.append(_loads(line))
        except json.JSONDecodeError as e:
            raise DataFormatError(
                f"{path}: line {lineno} is not valid JSON (column {e.colno}): {e.msg}"
            ) from None
        except _BadNumber as e:
            raise DataFormatError(f"{path}: line {lineno}: {e}") from None
        except RecursionError:
            raise DataFormatError(f"{path}: line {lineno} is not valid JSON (nested too deeply)") from None
    return records
