"""Reading a sheet of a workbook or a .csv file: clean cell text, headers found by name or alias.

Shared by the roster and the task import (and the score import's cell reading). A problem is
a `Problem` value (models/problems.py) with its template under templates/errors/sheet_*.txt.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from models.problems import Problem, ProblemError

INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
HEADER_SCAN_ROWS = 10  # a title row or two above the header is tolerated


class SheetError(ProblemError):
    """A file that cannot be read as the sheets it should hold; `problems` says why."""


@dataclass(frozen=True)
class SheetSpec:
    """One sheet of a workbook: its columns (canonical first) and what is mandatory."""

    name: str
    columns: tuple[str, ...]
    required: tuple[str, ...]
    aliases: dict[str, tuple[str, ...]]
    sheet_aliases: tuple[str, ...]
    # Longest text the database column takes, per column.
    max_len: dict[str, int] = field(default_factory=dict)


class Row(dict[str, str]):
    """One data row: canonical header -> cell text, with `row`, its Excel row number."""

    def __init__(self, row: int, values: dict[str, str]) -> None:
        super().__init__(values)
        self.row = row


class Sheet(list[Row]):
    """The rows of one sheet, with the canonical headers found and header-level problems."""

    def __init__(self, name: str, header_row: int = 1) -> None:
        super().__init__()
        self.name = name
        self.header_row = header_row
        self.headers: list[str] = []
        self.errors: list[tuple[int, str, str]] = []  # (row, column, problem code)


def cell_text(value: Any) -> str:  # noqa: ANN401
    """A cell as clean text: NFKC, trimmed, whole numbers without ".0", dates as ISO."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, datetime):
        return value.date().isoformat() if value.time() == time() else value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = unicodedata.normalize("NFKC", str(value)).translate(INVISIBLE)
    return text.strip()


def header_key(text: str) -> str:
    """How headers and sheet names are compared: NFKC, no notes or asterisks, lower case."""
    text = cell_text(text).lower()
    text = re.sub(r"\(.*?\)|\*", "", text).strip()
    return re.sub(r"[\s\-]+", "_", text)


def header_map(spec: SheetSpec) -> dict[str, str]:
    """Compared header text (canonical name or alias) -> canonical column."""
    out: dict[str, str] = {}
    for col in spec.columns:
        out[header_key(col)] = col
        for alias in spec.aliases.get(col, ()):
            out[header_key(alias)] = col
    return out


def build_sheet(name: str, mapping: dict[str, str], rows: Iterable[tuple[int, list[Any]]],
                code_columns: frozenset[str] = frozenset()) -> Sheet | None:
    """Turn raw rows (row number, cell values) into a Sheet; None for a sheet with nothing in it.

    The header is the first non-empty row naming a known column (a title row or two above it
    is tolerated); failing that, the first non-empty row. In `code_columns`, a text cell
    "2023010101.0" (a CSV saved from Excel) loses its ".0".
    """
    sheet: Sheet | None = None
    columns: dict[int, str] | None = None
    scanned = 0
    for number, cells in rows:
        texts = [cell_text(c) for c in cells]
        if not any(texts):
            continue
        if sheet is None:
            sheet = Sheet(name, header_row=number)
        if columns is None:
            found = {i: mapping[header_key(t)] for i, t in enumerate(texts) if header_key(t) in mapping}
            scanned += 1
            if not found:
                if scanned >= HEADER_SCAN_ROWS:
                    columns = {}  # no header at all: every required column is reported missing
                continue
            sheet.header_row = number
            columns = {}
            for i, col in sorted(found.items()):
                if col in columns.values():
                    sheet.errors.append((number, col, "sheet_column_twice"))
                else:
                    columns[i] = col
            sheet.headers = list(columns.values())
            continue
        values = {col: (texts[i] if i < len(texts) else "") for i, col in columns.items()}
        for col, text in values.items():
            if col in code_columns and re.fullmatch(r"\d+\.0+", text):
                values[col] = text.split(".")[0]
        if any(values.values()):
            sheet.append(Row(number, values))
    return sheet


def open_workbook(path: Path, error: type[SheetError] = SheetError) -> Any:  # noqa: ANN401
    """The workbook at `path`, read only; raise `error` when it cannot be read."""
    import openpyxl  # noqa: PLC0415  (only needed for workbooks)

    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001  (zipfile, XML and openpyxl errors alike)
        raise error.of("sheet_unreadable_workbook", name=path.name, reason=str(exc)) from exc


def worksheet_rows(ws: Any) -> Iterator[tuple[int, list[Any]]]:  # noqa: ANN401
    """(row number, cell values) of a worksheet."""
    return ((i, list(r)) for i, r in enumerate(ws.iter_rows(values_only=True), start=1))


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def csv_rows(path: Path) -> Iterator[tuple[int, list[Any]]]:
    """(row number, cells) of a .csv file in UTF-8 or GB18030; raise SheetError for neither."""
    import csv  # noqa: PLC0415

    try:
        text = _decode(path.read_bytes())
    except UnicodeDecodeError as exc:
        raise SheetError.of("sheet_csv_encoding", name=path.name) from exc
    for i, record in enumerate(csv.reader(text.splitlines()), start=1):
        yield i, list(record)


def file_problem(p: Path, folders: bool) -> Problem | None:
    """Why `p` is no workbook or .csv file to read (None when it is one); `folders`: a folder is accepted."""
    if not p.exists():
        return Problem("sheet_file_not_found", {"path": str(p)})
    if p.suffix.lower() not in (".xlsx", ".xlsm", ".csv"):
        return Problem("sheet_unsupported_format", {"name": p.name, "folders": folders})
    return None


def parse_date(text: str) -> date | None:
    """2025-09-01, 2025/9/1, 2025.9.1, 2025年9月1日, 20250901 or an Excel serial day; else None."""
    text = cell_text(text)
    if not text:
        return None
    text = re.split(r"[\sT]", text, maxsplit=1)[0]
    try:
        if m := re.fullmatch(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?", text):
            return date(int(m[1]), int(m[2]), int(m[3]))
        if re.fullmatch(r"\d{8}", text):
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        if re.fullmatch(r"\d{5}", text) and 20000 <= int(text) <= 80000:
            return date(1899, 12, 30) + timedelta(days=int(text))
    except ValueError:
        return None
    return None
