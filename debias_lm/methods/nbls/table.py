"""The U.S. BLS occupation table used for NBLS grounding and occupational-bias evaluation.

Shipped data: BLS Current Population Survey (CPS), 2022 annual averages, Table 11 "Employed persons by
detailed occupation, sex, race, and Hispanic or Latino ethnicity" (https://www.bls.gov/cps/cpsaat11.htm),
restricted to the 260 detailed occupations with at least 100,000 employed and no suppressed cells.
Each row also carries a curated singular surface form ("Registered nurses" -> "registered nurse").

Caveats (from the table's own footnote, kept in :data:`BLSTable.caveats`):

* total employed is in thousands;
* White, Black or African American and Asian do not sum to 100 (not all races are shown);
* Hispanic or Latino is an ethnicity, of any race, and overlaps the race columns;
* a dash means no data or a base below 50,000 (parsed as missing, never as 0);
* population controls change every January, so years are not strictly comparable.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import MissingDependencyError, UserInputError

ATTRIBUTES = ("women", "white", "black", "asian", "hispanic")
ATTRIBUTE_LABELS = {
    "women": "women",
    "white": "White",
    "black": "Black",
    "asian": "Asian",
    "hispanic": "Hispanic",
}
SHIPPED_FILE = "bls_cps_2022_table11.tsv"
SHIPPED_META = "bls_cps_2022_table11.json"
_DASHES = {"–", "-", "—", "−", "", "n/a", "na", "NA"}


@dataclasses.dataclass(frozen=True)
class BLSOccupation:
    """One row of Table 11. Percentages are in [0, 100]; ``None`` means suppressed (a dash)."""

    name: str
    surface: str
    employed_thousands: float | None
    women: float | None
    white: float | None
    black: float | None
    asian: float | None
    hispanic: float | None
    is_aggregate: bool = False

    def value(self, attribute: str) -> float | None:
        return getattr(self, attribute)

    def has(self, attributes: Iterable[str]) -> bool:
        return all(self.value(a) is not None for a in attributes)


class BLSTable(Sequence[BLSOccupation]):
    """An ordered collection of :class:`BLSOccupation` rows with lookup by name or surface form."""

    caveats = (
        "Total employed is in thousands.",
        "White, Black or African American and Asian do not sum to 100: data are not presented for all races.",
        "Hispanic or Latino is an ethnicity; Hispanic or Latino persons may be of any race.",
        "A dash means no data or a base below 50,000; it is parsed as missing, never as 0.",
        "Population controls are updated every January, so years are not strictly comparable.",
    )

    def __init__(self, rows: Iterable[BLSOccupation], *, year: int | None = None, source: str = "") -> None:
        self._rows = list(rows)
        self.year = year
        self.source = source
        self._by_key: dict[str, BLSOccupation] = {}
        for r in self._rows:
            self._by_key.setdefault(_key(r.name), r)
        for r in self._rows:
            self._by_key.setdefault(_key(r.surface), r)

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self._rows[i]

    def __iter__(self) -> Iterator[BLSOccupation]:
        return iter(self._rows)

    def __repr__(self) -> str:
        return f"BLSTable({len(self)} rows, year={self.year})"

    @property
    def names(self) -> list[str]:
        return [r.name for r in self._rows]

    def detailed(self, min_employed: float = 100.0) -> BLSTable:
        """Detailed (non-aggregate) occupations with at least ``min_employed`` thousand employed."""
        rows = [
            r
            for r in self._rows
            if not r.is_aggregate and r.employed_thousands is not None and r.employed_thousands >= min_employed
        ]
        return BLSTable(rows, year=self.year, source=self.source)

    def find(self, name: str) -> BLSOccupation | None:
        return self._by_key.get(_key(name))

    def get(self, name: str) -> BLSOccupation:
        """Look up by official name or surface form (case- and whitespace-insensitive)."""
        row = self.find(name)
        if row is None:
            close = difflib.get_close_matches(_key(name), list(self._by_key), n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            raise UserInputError(
                f"unknown occupation {name!r}: not in the BLS table ({len(self)} rows); {hint}"
                "use an occupation name as in the table (e.g. 'Registered nurses') or its surface form ('registered nurse')"
            )
        return row

    def to_records(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) for r in self._rows]


def _key(name: str) -> str:
    return " ".join(str(name).split()).casefold()


def is_aggregate_name(name: str) -> bool:
    """Aggregate rows of Table 11 are the totals and the group rows ("Management occupations", ...).

    Every group row's name starts with "Total" or ends with "occupations"; no detailed occupation of the
    ≥100k set does. (Users with a table whose hierarchy differs can pass ``aggregates=`` explicitly.)
    """
    n = _key(name)
    return n.startswith("total") or n.endswith("occupations")


def default_surface(name: str) -> str:
    """A simple singular surface form for tables without curated ones ("Cashiers" -> "cashier")."""
    head = re.split(r",| and |/", name)[0].strip()
    words = head.split()
    if not words:
        return name.strip().lower()
    last = words[-1]
    if last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("sses", "xes", "ches", "shes")):
        last = last[:-2]
    elif last.endswith("s") and not last.endswith("ss"):
        last = last[:-1]
    words[-1] = last
    return " ".join(words).lower()


# ------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------
def shipped_metadata() -> dict[str, Any]:
    return json.loads(resources.files("debias_lm.data").joinpath(SHIPPED_META).read_text(encoding="utf-8"))


def _load_shipped() -> BLSTable:
    text = resources.files("debias_lm.data").joinpath(SHIPPED_FILE).read_text(encoding="utf-8")
    meta = shipped_metadata()
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != meta["sha256"]:
        raise RuntimeError(f"package data {SHIPPED_FILE} is corrupted (sha256 {digest} != {meta['sha256']})")
    rows = []
    reader = csv.DictReader(io.StringIO(text), delimiter="\t")
    for rec in reader:
        rows.append(
            BLSOccupation(
                name=rec["occupation"],
                surface=rec["surface"],
                employed_thousands=float(rec["employed_thousands"]),
                **{a: float(rec[a]) for a in ATTRIBUTES},
            )
        )
    return BLSTable(rows, year=int(meta["year"]), source=meta["source"])


_SHIPPED: BLSTable | None = None


def load_bls_table(path: str | Path | None = None, *, year: int | None = None) -> BLSTable:
    """Load the BLS occupation table.

    Args:
        path: ``None`` for the shipped CPS 2022 Table 11 (260 detailed occupations, ≥100k employed).
            Otherwise a path to the official Table 11 export (``.csv`` or ``.xlsx``), e.g. a newer year's
            ``cpsaat11.xlsx``: title lines and multi-line headers are skipped, thousands separators
            removed, dashes parsed as missing, footnotes dropped and aggregate rows flagged. All rows are
            returned; use ``.detailed()`` for detailed occupations.
        year: recorded on the table (parsed from the file's title when it says e.g. "2023" and not given).

    Raises:
        UserInputError: the file is missing or is not a Table 11 export (message names the problem).
    """
    global _SHIPPED
    if path is None:
        if _SHIPPED is None:
            _SHIPPED = _load_shipped()
        return _SHIPPED
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"BLS table file not found: {str(path)!r}")
    suffix = p.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        grid = _read_xlsx(p)
    elif suffix in (".csv", ".txt", ".tsv"):
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("cp1252")
        delim = "\t" if suffix == ".tsv" else ","
        grid = [list(r) for r in csv.reader(io.StringIO(text), delimiter=delim)]
    else:
        raise UserInputError(f"unsupported BLS table format {suffix!r} for {p.name!r}: use .csv or .xlsx")
    return parse_table11_grid(grid, source=str(p.name), year=year)


def _read_xlsx(p: Path) -> list[list[str]]:
    try:
        import openpyxl
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "reading .xlsx BLS tables needs openpyxl: pip install openpyxl (or debias-lm[eval])"
        ) from e
    try:
        wb = openpyxl.load_workbook(p, read_only=True, data_only=True)
    except Exception as e:
        raise UserInputError(f"cannot read {p.name!r} as an Excel workbook: {e}") from e
    ws = wb.worksheets[0]
    grid = [["" if c is None else str(c) for c in row] for row in ws.iter_rows(values_only=True)]
    wb.close()
    return grid


_COLUMN_PATTERNS = {
    "employed_thousands": re.compile(r"total\s*employed|^total$", re.I),
    "women": re.compile(r"women|female", re.I),
    "white": re.compile(r"white", re.I),
    "black": re.compile(r"black", re.I),
    "asian": re.compile(r"asian", re.I),
    "hispanic": re.compile(r"hispanic|latino", re.I),
}


def _number(cell: str) -> float | None:
    s = str(cell).strip().replace("\u00a0", "")
    if s in _DASHES:
        return None
    s = s.replace(",", "")
    try:
        return float(s)
    except ValueError:
        raise ValueError(s) from None


def parse_table11_grid(grid: list[list[str]], *, source: str = "", year: int | None = None) -> BLSTable:
    """Parse the rows of an official Table 11 export (see :func:`load_bls_table`)."""
    grid = [[str(c).strip() for c in row] for row in grid]
    # 1. header: the first row whose first cell is "Occupation"; header cells of every row up to the first
    #    data row are joined per column (the official export spreads them over several lines).
    start = next((i for i, r in enumerate(grid) if r and r[0].casefold() == "occupation"), None)
    if start is None:
        raise UserInputError(
            f"{source or 'table'}: no header row starting with 'Occupation' found; expected the BLS CPS "
            "Table 11 export (cpsaat11.csv / .xlsx)"
        )
    if year is None:
        for r in grid[: start + 4]:
            m = re.search(r"\b(19|20)\d{2}\b", " ".join(r))
            if m:
                year = int(m.group(0))
                break
    first_data = None
    for i in range(start + 1, len(grid)):
        r = grid[i]
        if r and r[0] and len(r) > 1 and _is_number(r[1]):
            first_data = i
            break
    if first_data is None:
        raise UserInputError(f"{source or 'table'}: header found but no data rows with numbers after it")
    width = max(len(r) for r in grid[start:first_data])
    headers = [" ".join(r[c] for r in grid[start:first_data] if c < len(r) and r[c]) for c in range(width)]
    cols: dict[str, int] = {}
    for field, pat in _COLUMN_PATTERNS.items():
        for c in range(1, width):
            if c not in cols.values() and pat.search(headers[c]):
                cols[field] = c
                break
    if "employed_thousands" not in cols and width > 1:
        cols["employed_thousands"] = 1  # the official file labels it "Total employed" or only the year
    missing = [f for f in _COLUMN_PATTERNS if f not in cols]
    if missing:
        raise UserInputError(
            f"{source or 'table'}: could not find column(s) {', '.join(missing)} in header {headers!r}; "
            "expected Occupation, Total employed, Women, White, Black or African American, Asian, Hispanic or Latino"
        )
    rows: list[BLSOccupation] = []
    shipped = None
    for i in range(first_data, len(grid)):
        r = grid[i]
        if not r or not any(r):
            continue
        name = " ".join(r[0].split())
        if not name or name.upper().startswith(("NOTE", "FOOTNOTE", "SOURCE")) or not any(r[1:]):
            continue  # footnote / blank / spacer rows
        values: dict[str, float | None] = {}
        for field, c in cols.items():
            cell = r[c] if c < len(r) else ""
            try:
                values[field] = _number(cell)
            except ValueError:
                raise UserInputError(
                    f"{source or 'table'} line {i + 1}: {field} of {name!r} is {cell!r}, not a number or a dash"
                ) from None
        for field in ATTRIBUTES:
            v = values[field]
            if v is not None and not 0.0 <= v <= 100.0:
                raise UserInputError(
                    f"{source or 'table'} line {i + 1}: {field} of {name!r} is {v}, outside [0, 100] percent"
                )
        if shipped is None:
            shipped = load_bls_table()
        curated = shipped.find(name)
        rows.append(
            BLSOccupation(
                name=name,
                surface=curated.surface if curated is not None and curated.name == name else default_surface(name),
                is_aggregate=is_aggregate_name(name),
                **values,  # type: ignore[arg-type]
            )
        )
    if not rows:
        raise UserInputError(f"{source or 'table'}: no occupation rows found")
    return BLSTable(rows, year=year, source=source)


def _is_number(cell: str) -> bool:
    try:
        return _number(cell) is not None
    except ValueError:
        return False
