"""Partition values and keys (DESIGN §4 "Partition key", "Optional partitions"): canonical values,
keys built from raw values, their canonical text, and how two keys agree."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from controller.core.keys import (
    InvalidPartition,
    Key,
    agrees,
    canonical_value,
    key_from_text,
    key_text,
    make_key,
)
from controller.core.specs import PartitionSpec, TableSpec


def partition(name: str, kind: str, *, required: bool = True) -> PartitionSpec:
    return PartitionSpec.model_validate({"name": name, "type": kind, "is_required": required})


def table(name: str, *partitions: dict[str, Any]) -> TableSpec:
    return TableSpec.model_validate({"name": name, "partitions": list(partitions)})


ANO_MES = partition("ano_mes_referencia", "int")
DIA = partition("data_venda", "date")
REGIAO = partition("regiao", "string")

#: Two required partitions (int, date) and an optional string one.
VENDAS = table(
    "tb_vendas",
    {"name": "ano_mes", "type": "int"},
    {"name": "data_venda", "type": "date"},
    {"name": "regiao", "type": "string", "is_required": False},
)


def assert_invalid(spec: PartitionSpec, raw: Any) -> InvalidPartition:
    """``raw`` is rejected with 422 and a message naming the partition and the value."""
    with pytest.raises(InvalidPartition) as caught:
        canonical_value(spec, raw)
    error = caught.value
    assert error.status == 422
    assert error.partition == spec.name
    assert repr(spec.name) in str(error)
    assert repr(raw) in str(error)
    return error


# --- int ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["0202305", "202305", 202305, " 202305 ", "+202305", "\t202305\n"])
def test_int_spellings_of_one_value_canonicalise_to_the_integer(raw: Any) -> None:
    value = canonical_value(ANO_MES, raw)
    assert value == 202305
    assert type(value) is int


@pytest.mark.parametrize(("raw", "expected"), [("-42", -42), (-42, -42), ("-0042", -42), ("-0", 0), (0, 0)])
def test_negative_and_zero_ints(raw: Any, expected: int) -> None:
    assert canonical_value(ANO_MES, raw) == expected


@pytest.mark.parametrize("raw", ["2023-05", "abc", 12.5, 202305.0, True, False, "", "   ", "2023 05", "0x1F"])
def test_invalid_ints_are_rejected(raw: Any) -> None:
    assert_invalid(ANO_MES, raw)


def test_int_outside_a_64_bit_column_is_rejected() -> None:
    assert_invalid(ANO_MES, 10**19)
    assert_invalid(ANO_MES, str(-(10**19)))


def test_long_zero_padding_is_still_the_same_int() -> None:
    """The 64-bit bound is on the value, not on the text: zero padding of any length is allowed."""
    assert canonical_value(ANO_MES, "0" * 20 + "202305") == 202305


def test_none_for_a_required_int_is_reported_by_make_key() -> None:
    spec = table("t", {"name": "ano_mes_referencia", "type": "int"})
    with pytest.raises(InvalidPartition) as caught:
        make_key(spec, {"ano_mes_referencia": None})
    assert caught.value.status == 422
    assert caught.value.partition == "ano_mes_referencia"
    assert "'ano_mes_referencia'" in str(caught.value)


# --- date --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["2024-05-01", date(2024, 5, 1), " 2024-05-01 "])
def test_dates_canonicalise_to_iso_text(raw: Any) -> None:
    assert canonical_value(DIA, raw) == "2024-05-01"


def test_leap_day_is_a_date_only_in_leap_years() -> None:
    assert canonical_value(DIA, "2024-02-29") == "2024-02-29"
    assert_invalid(DIA, "2023-02-29")


@pytest.mark.parametrize(
    "raw",
    ["2024-13-01", "2024-02-30", "01/05/2024", 20240501, "20240501", "2024-5-1", "2024-05-01T00:00", ""],
)
def test_invalid_dates_are_rejected(raw: Any) -> None:
    assert_invalid(DIA, raw)


# --- string ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "sul",
        " sul ",
        "São Paulo",
        "東京",
        "'; DROP TABLE runs; --",
        'a=b,c/d"e',
        "x" * 256,
    ],
)
def test_strings_are_kept_as_given(raw: str) -> None:
    assert canonical_value(REGIAO, raw) == raw


def test_an_int_for_a_string_partition_becomes_its_text() -> None:
    assert canonical_value(REGIAO, 42) == "42"


@pytest.mark.parametrize("raw", ["", "x" * 257, True, 1.5, None])
def test_invalid_strings_are_rejected(raw: Any) -> None:
    assert_invalid(REGIAO, raw)


# --- make_key ----------------------------------------------------------------------------------------


def test_make_key_canonicalises_every_value() -> None:
    key = make_key(VENDAS, {"ano_mes": "0202305", "data_venda": date(2024, 5, 1), "regiao": "sul"})
    assert key == {"ano_mes": 202305, "data_venda": "2024-05-01", "regiao": "sul"}


def test_make_key_reports_a_missing_required_partition() -> None:
    with pytest.raises(InvalidPartition) as caught:
        make_key(VENDAS, {"ano_mes": 202305, "regiao": "sul"})
    assert caught.value.status == 422
    assert caught.value.partition == "data_venda"
    assert "'data_venda'" in str(caught.value)


def test_make_key_reports_an_unknown_partition_with_the_table_s_partitions() -> None:
    with pytest.raises(InvalidPartition) as caught:
        make_key(VENDAS, {"ano_mes": 202305, "data_venda": "2024-05-01", "regio": "sul"})
    error = caught.value
    assert error.status == 404
    assert error.partition == "regio"
    message = str(error)
    assert "'regio'" in message
    assert "'tb_vendas'" in message
    for name in ("ano_mes", "data_venda", "regiao"):
        assert name in message


def test_make_key_reports_an_invalid_value() -> None:
    with pytest.raises(InvalidPartition) as caught:
        make_key(VENDAS, {"ano_mes": "2023-05", "data_venda": "2024-05-01"})
    assert caught.value.status == 422
    assert caught.value.partition == "ano_mes"


def test_an_omitted_optional_partition_is_absent_from_the_key() -> None:
    key = make_key(VENDAS, {"ano_mes": 202305, "data_venda": "2024-05-01"})
    assert key == {"ano_mes": 202305, "data_venda": "2024-05-01"}
    assert "regiao" not in key


def test_none_for_an_optional_partition_is_the_same_as_omitting_it() -> None:
    given_none = make_key(VENDAS, {"ano_mes": 202305, "data_venda": "2024-05-01", "regiao": None})
    omitted = make_key(VENDAS, {"ano_mes": 202305, "data_venda": "2024-05-01"})
    assert given_none == omitted
    assert key_text(given_none) == key_text(omitted)


def test_a_table_without_partitions_has_the_empty_key() -> None:
    assert make_key(table("tb_config"), {}) == {}


# --- key_text ----------------------------------------------------------------------------------------


def test_key_text_does_not_depend_on_item_order() -> None:
    one: Key = {"ano_mes": 202305, "data_venda": "2024-05-01", "regiao": "sul"}
    other: Key = {"regiao": "sul", "data_venda": "2024-05-01", "ano_mes": 202305}
    assert list(one) != list(other)
    assert key_text(one) == key_text(other)


def test_key_text_differs_for_different_values() -> None:
    assert key_text({"ano_mes": 202305}) != key_text({"ano_mes": 202306})
    assert key_text({"ano_mes": 202305}) != key_text({"ano_mes": 202305, "regiao": "sul"})


def test_key_text_distinguishes_int_from_its_text() -> None:
    assert key_text({"p": 1}) != key_text({"p": "1"})
    assert key_from_text(key_text({"p": 1})) == {"p": 1}
    assert key_from_text(key_text({"p": "1"})) == {"p": "1"}


TRICKY_KEYS: list[Key] = [
    {},
    {"a": "1,b=2"},
    {"a": "1", "b": "2"},
    {"a": "1", "b": "2/c=3"},
    {"a": "1/b=2"},
    {"a": 'x"', "b": "y"},
    {"a": 'x", "b": "y'},
    {"a": "x\\", "b": "y"},
    {"a": "São Paulo", "b": "東京"},
    {"a": -5, "b": "2024-05-01"},
    {"a=1": "b"},
    {"a": "1=b"},
]


@pytest.mark.parametrize("key", TRICKY_KEYS, ids=repr)
def test_key_text_round_trips(key: Key) -> None:
    assert key_from_text(key_text(key)) == key


def test_key_text_is_unambiguous_for_separator_characters() -> None:
    texts = [key_text(k) for k in TRICKY_KEYS]
    assert len(set(texts)) == len(TRICKY_KEYS)


# --- agrees ------------------------------------------------------------------------------------------

SAME = [("data_venda", "data_venda")]


def test_equal_values_agree() -> None:
    assert agrees({"data_venda": "2024-05-01"}, {"data_venda": "2024-05-01"}, SAME)


def test_different_values_disagree() -> None:
    assert not agrees({"data_venda": "2024-05-01"}, {"data_venda": "2024-05-02"}, SAME)


def test_int_and_its_text_disagree() -> None:
    assert not agrees({"p": 1}, {"p": "1"}, [("p", "p")])


@pytest.mark.parametrize(
    ("left", "right"), [({}, {"data_venda": "2024-05-01"}), ({"data_venda": "2024-05-01"}, {})]
)
def test_an_omitted_value_on_either_side_agrees(left: Key, right: Key) -> None:
    assert agrees(left, right, SAME)


def test_every_pair_must_agree() -> None:
    pairs = [("data_venda", "data_venda"), ("regiao", "regiao")]
    left: Key = {"data_venda": "2024-05-01", "regiao": "sul"}
    assert agrees(left, {"data_venda": "2024-05-01", "regiao": "sul"}, pairs)
    assert not agrees(left, {"data_venda": "2024-05-01", "regiao": "norte"}, pairs)


def test_only_the_given_pairs_are_compared() -> None:
    left: Key = {"data_venda": "2024-05-01", "regiao": "sul"}
    right: Key = {"data_venda": "2024-05-01", "regiao": "norte"}
    assert agrees(left, right, SAME)
    assert agrees(left, right, [])


def test_name_pairs_compare_the_left_name_with_the_right_name() -> None:
    pairs = [("data_venda", "dt_cotacao")]
    left: Key = {"data_venda": "2024-05-01"}
    assert agrees(left, {"dt_cotacao": "2024-05-01", "data_venda": "1999-01-01"}, pairs)
    assert not agrees(left, {"dt_cotacao": "2024-05-02", "data_venda": "2024-05-01"}, pairs)
    # The pair is directional: reversed, it compares names that these keys do not hold.
    assert agrees(left, {"dt_cotacao": "2024-05-02"}, [("dt_cotacao", "data_venda")])
