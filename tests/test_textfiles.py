"""The shared guarded reader of text files: size, encoding, binary content, nesting, numbers."""

from __future__ import annotations

import math
import os

import pytest

from t7synth import textfiles
from t7synth.errors import UserError
from t7synth.textfiles import (
    check_nesting,
    decode_text,
    loads_json,
    loads_yaml,
    parse_int,
    parse_number,
    read_json,
    read_table,
    read_text,
    read_yaml,
)


# -- size ---------------------------------------------------------------------------------
def test_a_file_over_the_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("a: 1\n" * 100)
    assert read_text(path, max_bytes=500) == "a: 1\n" * 100
    with pytest.raises(UserError, match=r"big.yaml is 500 bytes, more than the 499"):
        read_text(path, max_bytes=499)


def test_a_device_or_folder_is_refused_and_a_missing_file_named(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        read_text(tmp_path)
    with pytest.raises(UserError, match="not a regular file"):
        read_text("/dev/zero")  # would never end without the check
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="pipe.csv is not a regular file"):
        read_table(fifo)  # would block forever on open
    with pytest.raises(UserError, match="gone.json not found"):
        read_json(tmp_path / "gone.json")


def test_what_names_the_file_in_every_message(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"\x00")
    with pytest.raises(UserError, match=r"^config file X is binary"):
        read_yaml(path, "config file X")


# -- encodings ----------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32", "utf-16-be"])
def test_byte_order_marks_declare_the_encoding(encoding):
    text = "name: Zoë\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    assert decode_text(data, "f") == text


def test_latin1_is_read_as_windows_1252_only_where_allowed():
    data = "subject,site\nsub-1,Hôpital Édouard,\u20ac\n".encode("cp1252")  # the euro sign is 0x80 in cp1252
    assert decode_text(data, "t.csv", legacy=True) == "subject,site\nsub-1,Hôpital Édouard,\u20ac\n"
    with pytest.raises(UserError, match=r"t.csv is not UTF-8 text \(byte 20\); save it as UTF-8"):
        decode_text(data, "t.csv")  # YAML and JSON are Unicode by their specifications


def test_bytes_undefined_in_windows_1252_are_refused_not_guessed():
    with pytest.raises(UserError, match="is not UTF-8 text"):
        decode_text(b"name,\x81x\n", "t.csv", legacy=True)


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n\x00\x00", b"epoch\n1\x002\n", b"a\x07b\n", "a\u0085b".encode(), b"\xff\xfe\x01\x00"],
    ids=["png", "nul", "bell", "c1-in-utf8", "utf16-control"],
)
def test_binary_content_is_refused_in_one_line(data):
    with pytest.raises(UserError, match=r"^m.csv is binary, not text") as error:
        decode_text(data, "m.csv", legacy=True)
    assert "\n" not in str(error.value)


def test_tabs_line_and_page_breaks_are_text():
    assert decode_text(b"a\tb\r\nc\x0cd\n", "t") == "a\tb\r\nc\x0cd\n"


# -- nesting ------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [65, 1000, 50_000])
def test_deep_yaml_and_json_are_refused_without_recursion_errors(depth):
    flow = "[" * depth + "]" * depth
    with pytest.raises(UserError, match="x nests lists or mappings more than 64 levels deep"):
        loads_yaml(flow, "x")
    with pytest.raises(UserError, match="x nests lists or mappings more than 64 levels deep"):
        loads_json(flow, "x")


def test_deep_block_yaml_is_refused():
    with pytest.raises(UserError, match="more than 64 levels"):
        loads_yaml("- " * 20_000 + "x\n", "x")


def test_the_depth_limit_is_exact():
    assert check_nesting([[[]]], "x", max_depth=3) == [[[]]]
    with pytest.raises(UserError, match="more than 2 levels"):
        check_nesting([[[1]]], "x", max_depth=2)


def test_a_structure_built_past_pythons_recursion_limit_is_checked_without_recursion():
    data: list = []
    for _ in range(100_000):  # no parser can build this, but code can: the walk must not recurse
        data = [data]
    with pytest.raises(UserError, match="more than 64 levels"):
        check_nesting(data, "x")


def test_aliases_are_counted_as_copies_and_cycles_refused():
    laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdef", "bcdefg")
    )
    with pytest.raises(UserError, match="more than 1000000 values"):
        loads_yaml(laughs, "x")
    assert loads_yaml("a: &a [1, 2]\nb: *a\n", "x") == {"a": [1, 2], "b": [1, 2]}  # small aliases are fine
    with pytest.raises(UserError, match="contains itself"):
        loads_yaml("a: &a [1, *a]\n", "x")


def test_yaml_that_would_build_objects_is_not_plain_and_syntax_errors_name_the_line():
    with pytest.raises(UserError, match="x is not plain YAML"):
        loads_yaml("!!python/object/apply:os.system ['true']\n", "x")
    with pytest.raises(UserError, match=r"x is not valid YAML \(line 2\)"):
        loads_yaml("a: 1\n  b: 2\n", "x")


def test_json_refuses_nan_and_reads_a_file(tmp_path):
    with pytest.raises(UserError, match="is not valid JSON: NaN"):
        loads_json('{"a": NaN}', "x")
    path = tmp_path / "m.json"
    path.write_text('{"format": "t7synth", "n": [1, 2]}')
    assert read_json(path) == {"format": "t7synth", "n": [1, 2]}


# -- tables -------------------------------------------------------------------------------
def test_tables_keep_line_numbers_and_refuse_ragged_rows(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('a,b\n1,"two\nlines"\n3,4\n')
    table = read_table(path)
    assert table.fieldnames == ["a", "b"] and table.lines == [3, 4] and table.rows[0]["b"] == "two\nlines"
    path.write_text("a,b\n1,2\n3\n")
    with pytest.raises(UserError, match=r"s.csv, line 3: 2 cells expected"):
        read_table(path)
    assert read_table(path, complete=False).rows[1] == {"a": "3", "b": None}


def test_a_malformed_table_is_one_line(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('a,b\n"' + "x" * 200_000 + "\n")  # an unclosed quote: csv's field limit
    with pytest.raises(UserError, match=r"s.csv, line \d+: field larger than field limit"):
        read_table(path)


def test_a_latin1_tsv_reads_with_its_accents(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_bytes("participant_id\tsite\nsub-1\tZürich\n".encode("latin-1"))
    assert read_table(path, delimiter="\t", legacy=True).rows == [{"participant_id": "sub-1", "site": "Zürich"}]
    with pytest.raises(UserError, match="is not UTF-8"):
        read_table(path, delimiter="\t", legacy=False)


# -- numbers ------------------------------------------------------------------------------
def test_numbers_refuse_nan_always_and_infinity_where_finite():
    assert parse_number(" 2.5 ", "c") == 2.5
    assert parse_number("inf", "c", finite=False) == math.inf
    with pytest.raises(UserError, match=r"c must be a finite number, not 'inf'"):
        parse_number("inf", "c")
    for text in ("nan", "NaN", "", "high", None):
        with pytest.raises(UserError, match="c is not a number"):
            parse_number(text, "c", finite=False)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", 3), ("3.0", 3), ("0", 0), (" 12 ", 12)],
)
def test_whole_numbers(text, expected):
    assert parse_int(text, "epoch") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-1", "epoch must be at least 0"),
        ("2.5", "epoch must be a whole number"),
        ("inf", "epoch must be a finite number"),
        ("-inf", "epoch must be a finite number"),
        ("1e999", "epoch must be a finite number"),
        ("nan", "epoch is not a number"),
        ("three", "epoch is not a number"),
    ],
)
def test_bad_whole_numbers_are_one_line(text, message):
    with pytest.raises(UserError, match=message):
        parse_int(text, "epoch")


def test_a_minimum_above_zero():
    with pytest.raises(UserError, match="rank must be at least 1, not '0'"):
        parse_int("0", "rank", minimum=1)


def test_the_limits_are_what_the_docs_say():
    assert textfiles.MAX_DEPTH == 64 and textfiles.TEXT_LIMIT == 16 * 2**20 and textfiles.TABLE_LIMIT == 256 * 2**20


def test_a_long_bad_cell_is_shown_cut_short_on_one_line():
    with pytest.raises(UserError) as error:
        parse_int("x" * 100_000 + "\n2", "epoch")
    assert len(str(error.value)) < 100 and "\n" not in str(error.value) and str(error.value).endswith("...")
