"""Gate locks: registrations that could open one gate together serialise; others run side by side."""

from __future__ import annotations

from controller.core.gates import Execution, GateLock, Graph, gate_locks
from tests.test_gates import DAY, NEXT_DAY, dep, part, spec

DAILY = [part("dt", "date")]
REGIONAL = [part("dt", "date"), part("regiao", "string")]


def locks(graph: Graph, table: str, **key: object) -> list[GateLock]:
    return gate_locks(graph, Execution(0, table, dict(key)))  # type: ignore[arg-type]


def test_upstreams_sharing_the_dependent_s_partition_lock_just_that_key() -> None:
    graph = Graph([spec("a", DAILY), spec("b", DAILY), spec("d", DAILY, [dep("a"), dep("b")])])
    assert locks(graph, "a", dt=DAY) == locks(graph, "b", dt=DAY) == [GateLock("d", '[["dt","2024-05-01"]]')]
    assert locks(graph, "a", dt=NEXT_DAY) != locks(graph, "a", dt=DAY)


def test_the_key_is_the_dependent_s_partition_name_through_a_partition_map() -> None:
    graph = Graph(
        [
            spec("a", DAILY),
            spec("rate", [part("dt_cotacao", "date")]),
            spec("d", DAILY, [dep("a"), dep("rate", dt="dt_cotacao")]),
        ]
    )
    assert locks(graph, "rate", dt_cotacao=DAY) == locks(graph, "a", dt=DAY)


def test_only_partitions_every_upstream_provides_are_in_the_lock() -> None:
    """d (dt, regiao) on v (dt, regiao) and a daily rate: the rate fixes only dt, so the lock is on dt."""
    graph = Graph([spec("v", REGIONAL), spec("rate", DAILY), spec("d", REGIONAL, [dep("v"), dep("rate")])])
    assert graph.lock_partitions(graph.tables["d"]) == ("dt",)
    assert locks(graph, "v", dt=DAY, regiao="sul") == locks(graph, "v", dt=DAY, regiao="norte")
    assert locks(graph, "v", dt=DAY, regiao="sul") == locks(graph, "rate", dt=DAY)


def test_an_upstream_sharing_nothing_makes_every_decision_of_the_table_take_the_whole_lock() -> None:
    graph = Graph(
        [spec("a", DAILY), spec("config"), spec("d", DAILY, [dep("a"), dep("config", required=False)])]
    )
    assert locks(graph, "a", dt=DAY) == [GateLock("d")]
    assert locks(graph, "config") == [GateLock("d")]


def test_an_execution_omitting_a_lock_partition_takes_the_whole_table_lock() -> None:
    optional_region = [part("dt", "date"), part("regiao", "string", required=False)]
    graph = Graph(
        [spec("v", REGIONAL), spec("p", optional_region), spec("d", REGIONAL, [dep("v"), dep("p")])]
    )
    assert graph.lock_partitions(graph.tables["d"]) == ("dt", "regiao")
    assert locks(graph, "p", dt=DAY) == [GateLock("d")]
    assert locks(graph, "p", dt=DAY, regiao="sul") == locks(graph, "v", dt=DAY, regiao="sul")


def test_each_dependent_gets_its_own_lock() -> None:
    graph = Graph([spec("a", DAILY), spec("d1", DAILY, [dep("a")]), spec("d2", [], [dep("a")])])
    assert locks(graph, "a", dt=DAY) == [GateLock("d1", '[["dt","2024-05-01"]]'), GateLock("d2")]
