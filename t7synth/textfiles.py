"""The one guarded path by which t7synth reads a text file a user or a run folder gave it.

Config and sweep YAML, run-folder tables (``metrics.csv``, ``test_scores.csv``,
``trials.csv``), ``participants.tsv``, ``--pairs`` tables, JSON sidecars, package
manifests and ``trial.json`` all come from outside this process: a user may point a
command at the wrong file, a disk may have damaged one, a package may be hostile. Each
reader here turns every such case into one :class:`~t7synth.errors.UserError` line
naming the file, instead of a ``UnicodeDecodeError``, ``RecursionError`` or
``OverflowError`` traceback. Five guards, the same for every reader:

* **Size.** A file is read only when it is a regular file no larger than a limit
  (:data:`TEXT_LIMIT` for YAML and JSON, :data:`TABLE_LIMIT` for tables), and never
  more than the limit is read (a file that grows, ``/dev/zero``), so a wrong path costs
  no memory.
* **Encoding.** UTF-8, with a byte-order mark accepted (spreadsheet programs write
  one); a UTF-16 or UTF-32 byte-order mark declares those encodings (Windows
  "Unicode text" exports). Tables people edit (``legacy=True``: ``--pairs``,
  ``participants.tsv``) that are not UTF-8 are read as
  Windows-1252, the superset of Latin-1 that European spreadsheet programs write, when
  every byte decodes and the result is text: accented names in a clinic's table read
  right. YAML (YAML 1.2, section 5.2) and JSON (RFC 8259, section 8.1) are Unicode by
  their specifications, so they get no such fallback. A statistical detector was
  tried and rejected: ``charset-normalizer`` 3.5 reads a Latin-1 ``name: café`` as
  cp1006 (``cafﻠ``) and a Latin-1 table as cp1250, which would silently rename
  subjects; a fixed rule never does.
* **Binary content** (a NUL byte, or control characters other than tab, line and page
  breaks) is refused in one line: a checkpoint or picture saved under a table's name.
* **Nesting.** YAML and JSON are parsed safely (``yaml.safe_load``: no Python
  objects), their parser's own ``RecursionError`` on tens of thousands of nested lists
  is caught, and the parsed structure is then walked *without recursion* (an explicit
  stack) to refuse more than :data:`MAX_DEPTH` levels, more than :data:`MAX_NODES`
  values counted with every YAML alias expanded ("billion laughs"), and a structure
  that contains itself (a YAML alias to its own parent), before any recursive code of
  t7synth (merging, flattening, printing) meets it.
* **Numbers.** :func:`parse_number` and :func:`parse_int` read a table's cell: NaN is
  never a number, infinity only where a caller allows it, an epoch or rank is a whole
  number of at least zero.

This module is low in the layers (beside :mod:`t7synth.files` and
:mod:`t7synth.errors`): every stage may use it, and it imports only the standard
library, :mod:`t7synth.errors` and PyYAML.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from t7synth.errors import UserError

#: The largest YAML or JSON file read (configs, sweeps, manifests, sidecars are kilobytes).
TEXT_LIMIT = 16 * 2**20
#: The largest table read: a long run's ``metrics.csv`` logged every step stays far below.
TABLE_LIMIT = 256 * 2**20
#: The deepest nesting of lists and mappings accepted: t7synth's own files nest four levels.
MAX_DEPTH = 64
#: The most values a YAML or JSON document may hold, with each alias counted as a copy.
MAX_NODES = 1_000_000

# Byte-order marks that declare an encoding; UTF-32's must be tested before UTF-16's,
# whose little-endian mark is its first two bytes.
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
#: Control characters that text never holds: C0 but tab, line feed, vertical tab, form
#: feed and carriage return; DEL; C1 (what Latin-1 decodes Windows-1252's letters to).
_CONTAINERS = (dict, list, tuple, set, frozenset)
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def _name(path: str | os.PathLike, what: str | None) -> str:
    return what if what is not None else str(path)


def read_bytes(path: str | os.PathLike, what: str | None = None, max_bytes: int = TEXT_LIMIT) -> bytes:
    """The bytes of ``path``, a regular file of at most ``max_bytes``.

    Args:
        path: the file.
        what: how errors name it (default: the path).
        max_bytes: the size limit.

    Raises:
        UserError: missing, a folder or another non-regular file (a pipe would block),
            unreadable, or larger than the limit.
    """
    path, name = Path(path), _name(path, what)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{name} not found") from None
    except OSError as error:
        raise UserError(f"cannot read {name}: {error.strerror or error}") from None
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{name} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{name} is not a regular file")
    if info.st_size > max_bytes:
        raise UserError(f"{name} is {info.st_size} bytes, more than the {max_bytes} a text file t7synth reads may have")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)  # the file may grow after stat
    except OSError as error:
        raise UserError(f"cannot read {name}: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise UserError(f"{name} is more than the {max_bytes} bytes a text file t7synth reads may have")
    return data


def decode_text(data: bytes, what: str, legacy: bool = False) -> str:
    """``data`` as text, by the rules of the module docstring.

    Args:
        data: the file's bytes.
        what: how errors name the file.
        legacy: read non-UTF-8 bytes as Windows-1252 (tables from spreadsheet programs).

    Raises:
        UserError: binary content, or bytes that are not UTF-8 (nor, with ``legacy``,
            Windows-1252 text).
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as error:
                raise UserError(
                    f"{what} is not {encoding.upper()} text (byte {error.start}), as its first bytes declare"
                ) from None
            text = text.removeprefix("\ufeff")
            break
    else:
        nul = data.find(b"\0")
        if nul >= 0:
            raise UserError(f"{what} is binary, not text (a NUL byte at byte {nul})")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            text = _legacy(data) if legacy else None
            if text is None:
                raise UserError(f"{what} is not UTF-8 text (byte {error.start}); save it as UTF-8") from None
    control = _CONTROL.search(text)
    if control:
        raise UserError(
            f"{what} is binary, not text (control character {control.group()!r} at character {control.start()})"
        )
    return text


def _legacy(data: bytes) -> str | None:
    # Windows-1252 leaves five bytes undefined: such a file is neither UTF-8 nor a
    # spreadsheet's Latin-1, and guessing further would garble names.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return None


def read_text(
    path: str | os.PathLike, what: str | None = None, max_bytes: int = TEXT_LIMIT, legacy: bool = False
) -> str:
    """A text file, size-limited and decoded by the rules of the module docstring.

    Raises:
        UserError: see :func:`read_bytes` and :func:`decode_text`.
    """
    name = _name(path, what)
    return decode_text(read_bytes(path, name, max_bytes), name, legacy)


def check_nesting(data: Any, what: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> Any:
    """Return ``data`` after checking its nesting, walked with an explicit stack.

    Each list or mapping is visited once (a YAML alias shares one object); its depth
    and its expanded size (aliases counted as copies) are computed bottom-up, so a
    document of a few hundred bytes that expands to billions of values is refused
    without being expanded.

    Raises:
        UserError: deeper than ``max_depth``, more than ``max_nodes`` values, or a
            list or mapping that contains itself.
    """

    def children(node: Any) -> list:
        if isinstance(node, dict):
            return [*node.keys(), *node.values()]
        return list(node)

    sizes: dict[int, int] = {}  # id -> expanded size, of the containers finished
    open_ids: set[int] = set()  # the containers on the path from the root to the top of the stack
    stack = [data] if isinstance(data, _CONTAINERS) else []
    while stack:
        node = stack[-1]
        key = id(node)
        if key in sizes:  # met again through an alias, after it was finished
            stack.pop()
            continue
        items = children(node)
        if key not in open_ids:  # first visit: open it and put its containers above it
            open_ids.add(key)
            if len(open_ids) > max_depth:
                raise UserError(f"{what} nests lists or mappings more than {max_depth} levels deep")
            for child in items:
                if id(child) in open_ids:
                    raise UserError(f"{what} contains itself (a YAML alias to its own parent)")
                if isinstance(child, _CONTAINERS) and id(child) not in sizes:
                    stack.append(child)
            continue
        # second visit: every container above it is finished
        total = 1 + sum(sizes.get(id(child), 1) for child in items)
        if total > max_nodes:
            raise UserError(f"{what} holds more than {max_nodes} values (counting each YAML alias as a copy)")
        sizes[key] = total
        open_ids.discard(key)
        stack.pop()
    return data


def loads_yaml(text: str, what: str) -> Any:
    """Parse YAML text safely (no Python objects) and check its nesting.

    Raises:
        UserError: not valid YAML (with the line), a tag that would build an object,
            nesting too deep for the parser or for :func:`check_nesting`.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        if isinstance(error, yaml.constructor.ConstructorError):  # a python/* tag, say: never built
            raise UserError(f"{what} is not plain YAML: {error.problem}{where}") from None
        raise UserError(f"{what} is not valid YAML{where}") from None
    except RecursionError:
        raise UserError(f"{what} nests lists or mappings more than {MAX_DEPTH} levels deep") from None
    return check_nesting(data, what)


def read_yaml(path: str | os.PathLike, what: str | None = None, max_bytes: int = TEXT_LIMIT) -> Any:
    """A YAML file read through :func:`read_text` and :func:`loads_yaml`."""
    name = _name(path, what)
    return loads_yaml(read_text(path, name, max_bytes), name)


def loads_json(text: str, what: str) -> Any:
    """Parse JSON text and check its nesting.

    ``NaN`` and ``Infinity`` (which Python writes but JSON does not have) are refused.

    Raises:
        UserError: not valid JSON, or nested too deep (the C parser's own
            ``RecursionError`` included).
    """

    def constant(name: str) -> float:
        raise ValueError(f"{name} is not a JSON value")

    try:
        data = json.loads(text, parse_constant=constant)
    except ValueError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{what} is not valid JSON: {reason}") from None
    except RecursionError:
        raise UserError(f"{what} nests lists or mappings more than {MAX_DEPTH} levels deep") from None
    return check_nesting(data, what)


def read_json(path: str | os.PathLike, what: str | None = None, max_bytes: int = TEXT_LIMIT) -> Any:
    """A JSON file read through :func:`read_text` and :func:`loads_json`."""
    name = _name(path, what)
    return loads_json(read_text(path, name, max_bytes), name)


@dataclass
class Table:
    """A delimited table: its header and its rows as ``{column: cell}``.

    ``lines[i]`` is the line on which row ``i`` ends (the header is line 1), for
    messages. A row with fewer cells than the header has ``None`` for the missing
    ones, one with more has the extra cells under the key ``None`` (``csv.DictReader``'s
    convention), when the table was read with ``complete=False``.
    """

    fieldnames: list[str]
    rows: list[dict[str | None, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


def read_table(
    path: str | os.PathLike,
    what: str | None = None,
    delimiter: str = ",",
    complete: bool = True,
    max_bytes: int = TABLE_LIMIT,
    legacy: bool = False,
) -> Table:
    """A CSV or TSV file, read whole through :func:`read_text` and :mod:`csv`.

    Args:
        path: the table.
        what: how errors name it (default: the path).
        delimiter: ``,`` or a tab.
        complete: refuse a row whose number of cells differs from the header's (a
            reader of a file being rewritten, e.g. a running trial's ``metrics.csv``,
            passes ``False`` and skips such rows itself).
        max_bytes: the size limit.
        legacy: read a non-UTF-8 table as Windows-1252 text (see the module docstring):
            for tables people edit in spreadsheet programs (``--pairs``,
            ``participants.tsv``), never for the tables t7synth writes itself.

    Raises:
        UserError: see :func:`read_text`; a malformed table (an unclosed quote, a cell
            longer than :mod:`csv` takes) or, with ``complete``, a ragged row, naming
            the line.
    """
    name = _name(path, what)
    reader = csv.DictReader(io.StringIO(read_text(path, name, max_bytes, legacy), newline=""), delimiter=delimiter)
    table = Table([])
    try:
        table.fieldnames = list(reader.fieldnames or [])
        for row in reader:
            if complete and (None in row or None in row.values()):
                raise UserError(
                    f"{name}, line {reader.line_num}: {len(table.fieldnames)} cells expected, the row has a "
                    "different number"
                )
            table.rows.append(row)
            table.lines.append(reader.line_num)
    except csv.Error as error:
        raise UserError(f"{name}, line {reader.line_num}: {error}") from None
    return table


def _shown(text: Any) -> str:
    # A damaged cell can be megabytes long: an error line shows its start.
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def parse_number(text: Any, what: str, finite: bool = True) -> float:
    """A table cell as a float: never NaN; infinite only where ``finite`` is ``False``
    (a perfect prediction's PSNR is infinite, an epoch never is).

    Args:
        text: the cell (a number already parsed is taken as it is).
        what: how errors name the cell (file, line, column).
        finite: refuse infinity.

    Raises:
        UserError: not a number, NaN, or infinite when ``finite``.
    """
    try:
        value = float(text.strip() if isinstance(text, str) else text)
    except (TypeError, ValueError):
        raise UserError(f"{what} is not a number: {_shown(text)}") from None
    if math.isnan(value):
        raise UserError(f"{what} is not a number: {_shown(text)}")
    if finite and math.isinf(value):
        raise UserError(f"{what} must be a finite number, not {_shown(text)}")
    return value


def parse_int(text: Any, what: str, minimum: int = 0) -> int:
    """A table cell as a whole number of at least ``minimum`` (an epoch, a rank);
    ``3.0`` is taken (pandas writes an integer column with gaps as floats).

    Raises:
        UserError: not a finite number, not whole, or below ``minimum``.
    """
    value = parse_number(text, what)
    if not value.is_integer():
        raise UserError(f"{what} must be a whole number, not {_shown(text)}")
    if value < minimum:
        raise UserError(f"{what} must be at least {minimum}, not {_shown(text)}")
    return int(value)
