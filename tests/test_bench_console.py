"""The console benchmark in quick mode on SQLite: every page has a row at every history size, and a
page sends as many SQL statements (and checks out as many connections) over the larger history as over
the smaller one. No timing is asserted: the figures that count are BENCHMARKS.md's."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import console


@pytest.mark.slow
def test_every_page_measured_with_statements_constant_in_the_history(tmp_path: Path) -> None:
    assert len(console.QUICK_SIZES) >= 2, "quick mode must compare two history sizes"
    [table] = console.run(quick=True, kinds=["sqlite"], workdir=str(tmp_path))
    assert all(len(row) == len(table.headers) for row in table.rows)
    column = {name: table.headers.index(name) for name in table.headers}
    measured = [row for row in table.rows if not str(row[column["page"]]).startswith("floor:")]
    names = [page.name for page in console.pages(1)]
    by_page: dict[str, dict[int, list[object]]] = {}
    for row in measured:
        assert row[column["database"]] == "sqlite"
        by_page.setdefault(str(row[column["page"]]), {})[int(row[column["runs in history"]])] = row
    assert sorted(by_page) == sorted(names)
    for name, rows in by_page.items():
        assert sorted(rows) == sorted(console.QUICK_SIZES), name
        for counted in ("SQL statements", "connections checked out"):
            values = {size: row[column[counted]] for size, row in rows.items()}
            # An int: the same in every request of a size (a range would be text such as "10–12").
            assert all(isinstance(v, int) and v > 0 for v in values.values()), (name, counted, values)
            assert len(set(values.values())) == 1, (name, counted, values)
    assert any("the same at every history size" in note for note in table.notes), table.notes
