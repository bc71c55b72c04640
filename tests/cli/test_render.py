"""What the CLI prints: padded plain-text tables and the JSON of `--json` listings."""

from __future__ import annotations

import json

from pydantic import BaseModel

from shoal.cli.render import json_list, table


class Row(BaseModel):
    name: str
    port: int


def test_columns_are_padded_to_their_widest_cell_two_spaces_apart() -> None:
    text = table(["NAME", "IP"], [["web", "10.42.1.2"], ["database", "10.42.2.10"]])
    assert text.splitlines() == [
        "NAME      IP",
        "web       10.42.1.2",
        "database  10.42.2.10",
    ]


def test_no_line_ends_in_spaces_and_no_rows_prints_the_header() -> None:
    assert table(["NAME", "NOTE"], [["a", ""]]) == "NAME  NOTE\na"
    assert table(["NAME", "IP"], []) == "NAME  IP"


def test_a_json_listing_is_an_array_of_the_models() -> None:
    text = json_list([Row(name="web", port=80), Row(name="db", port=5432)])
    assert json.loads(text) == [{"name": "web", "port": 80}, {"name": "db", "port": 5432}]
    assert json_list([]) == "[]"
