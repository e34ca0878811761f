"""Gates (DESIGN §4 "Gate", "Optional partitions"): which runs a registered execution opens.

Each test registers executions in a :class:`Registry`, which plays the database: an execution is
stored first, then the executions that :func:`probes` asks for are fetched (those of the probed
tables whose probed partition matches or is omitted) and handed to :func:`openings`. Every
registration is also evaluated against *all* stored executions, and the two must agree: this is
what checks that the probes fetch enough.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

import controller.core.gates
from controller.core.gates import (
    DependencyStatus,
    Execution,
    Graph,
    Opening,
    Probe,
    gate,
    gate_locks,
    openings,
    probes,
)
from controller.core.keys import Key, key_text, make_key
from controller.core.specs import TableSpec

# --- helpers -----------------------------------------------------------------------------------------


def part(name: str, kind: str = "int", *, required: bool = True) -> dict[str, Any]:
    return {"name": name, "type": kind, "is_required": required}


def dep(name: str, *, required: bool = True, **partition_map: str) -> dict[str, Any]:
    """A dependency on ``name``; keyword arguments map this table's partition → the upstream's."""
    return {"dependency_name": name, "is_required": required, "partition_map": partition_map}


def spec(
    name: str, partitions: Iterable[dict[str, Any]] = (), dependencies: Iterable[dict[str, Any]] = ()
) -> TableSpec:
    return TableSpec.model_validate(
        {"name": name, "partitions": list(partitions), "dependencies": list(dependencies)}
    )


def matches(probe: Probe, execution: Execution) -> bool:
    """What the database returns for a probe: the table's executions whose value matches or is omitted."""
    if probe.table != execution.table:
        return False
    return probe.partition is None or execution.key.get(probe.partition, probe.value) == probe.value


def fetch(executions: Iterable[Execution], wanted: Sequence[Probe]) -> dict[str, list[Execution]]:
    fetched: dict[str, list[Execution]] = {}
    for execution in executions:
        if any(matches(p, execution) for p in wanted):
            fetched.setdefault(execution.table, []).append(execution)
    return fetched


def by_table(executions: Iterable[Execution]) -> dict[str, list[Execution]]:
    grouped: dict[str, list[Execution]] = {}
    for execution in executions:
        grouped.setdefault(execution.table, []).append(execution)
    return grouped


def normal(found: Iterable[Opening]) -> list[tuple[str, str, list[int]]]:
    return sorted((o.dependent, key_text(o.key), sorted(o.triggers)) for o in found)


class Registry:
    """Definitions and the executions registered so far (ids 1, 2, … in registration order)."""

    def __init__(self, *tables: TableSpec) -> None:
        self.graph = Graph(tables)
        self.executions: list[Execution] = []

    def execution(self, table: str, **values: Any) -> Execution:
        """Store an execution of ``table`` (values canonicalised by ``make_key``) without evaluating gates."""
        stored = Execution(len(self.executions) + 1, table, make_key(self.graph.tables[table], values))
        self.executions.append(stored)
        return stored

    def register(self, table: str, **values: Any) -> list[Opening]:
        """Store an execution and return the runs it opens, evaluated from what its probes fetch."""
        execution = self.execution(table, **values)
        probed = openings(self.graph, execution, fetch(self.executions, probes(self.graph, execution)))
        everything = openings(self.graph, execution, by_table(self.executions))
        assert normal(probed) == normal(everything), "the probes did not fetch every execution needed"
        self._check_locks(probed)
        return probed

    def _check_locks(self, opened: Iterable[Opening]) -> None:
        """Executions that open a gate together hold one lock for it: the same key's, or the whole table's.

        Otherwise two concurrent registrations could each miss the other's execution (write skew).
        """
        by_id = {e.id: e for e in self.executions}
        for opening in opened:
            held = {
                lock.key
                for trigger in opening.triggers
                for lock in gate_locks(self.graph, by_id[trigger])
                if lock.table == opening.dependent
            }
            assert None in held or len(held) == 1, f"{opening} is decided under different locks {held}"

    @property
    def last(self) -> int:
        return self.executions[-1].id


def keys_of(found: Iterable[Opening]) -> list[Key]:
    return [o.key for o in found]


# --- Graph -------------------------------------------------------------------------------------------


def test_graph_indexes_tables_and_dependents() -> None:
    root = spec("tb_root", [part("p")])
    first = spec("tb_first", [part("p")], [dep("tb_root")])
    second = spec("tb_second", [part("p")], [dep("tb_first"), dep("tb_root", required=False)])
    graph = Graph([root, first, second])
    assert graph.tables == {"tb_root": root, "tb_first": first, "tb_second": second}
    assert graph.dependents["tb_root"] == [
        (first, first.dependencies[0], first.requirements[0]),
        (second, second.dependencies[1], second.requirements[1]),
    ]
    assert graph.dependents["tb_first"] == [(second, second.dependencies[0], second.requirements[0])]
    assert "tb_second" not in graph.dependents


# --- the original example ----------------------------------------------------------------------------

PREP = spec("tbjf001_op_pdz_prep", [part("ano_mes_referencia")])
ENRIQUECIDO = spec("tb_op_enriquecido", [part("ano_mes_referencia")], [dep("tbjf001_op_pdz_prep")])


def test_registering_the_upstream_opens_one_run_of_the_dependent() -> None:
    registry = Registry(PREP, ENRIQUECIDO)
    opened = registry.register("tbjf001_op_pdz_prep", ano_mes_referencia=202305)
    assert opened == [Opening("tb_op_enriquecido", {"ano_mes_referencia": 202305}, [registry.last])]


def test_a_single_dependency_needs_no_probe() -> None:
    registry = Registry(PREP, ENRIQUECIDO)
    execution = registry.execution("tbjf001_op_pdz_prep", ano_mes_referencia=202305)
    assert probes(registry.graph, execution) == []


def test_a_table_without_dependents_opens_nothing() -> None:
    registry = Registry(PREP, ENRIQUECIDO)
    assert registry.register("tb_op_enriquecido", ano_mes_referencia=202305) == []


# --- required and optional upstreams -----------------------------------------------------------------


def two_required_one_optional() -> Registry:
    return Registry(
        spec("tb_a", [part("ano_mes")]),
        spec("tb_b", [part("ano_mes")]),
        spec("tb_opt", [part("ano_mes")]),
        spec("tb_d", [part("ano_mes")], [dep("tb_a"), dep("tb_b"), dep("tb_opt", required=False)]),
    )


def test_the_first_required_upstream_alone_opens_nothing() -> None:
    registry = two_required_one_optional()
    assert registry.register("tb_a", ano_mes=202305) == []


def test_the_second_required_upstream_opens_the_run_without_the_optional_one() -> None:
    registry = two_required_one_optional()
    registry.register("tb_a", ano_mes=202305)
    a = registry.last
    opened = registry.register("tb_b", ano_mes=202305)
    assert opened == [Opening("tb_d", {"ano_mes": 202305}, [registry.last, a])]


def test_a_required_upstream_of_another_partition_does_not_satisfy_the_gate() -> None:
    registry = two_required_one_optional()
    registry.register("tb_a", ano_mes=202305)
    assert registry.register("tb_b", ano_mes=202306) == []


def test_the_optional_upstream_opens_the_run_when_the_required_ones_are_present() -> None:
    registry = two_required_one_optional()
    a = registry.execution("tb_a", ano_mes=202305).id
    b = registry.execution("tb_b", ano_mes=202305).id
    opened = registry.register("tb_opt", ano_mes=202305)
    assert len(opened) == 1
    assert opened[0].dependent == "tb_d"
    assert opened[0].key == {"ano_mes": 202305}
    assert opened[0].triggers[0] == registry.last
    assert sorted(opened[0].triggers) == sorted([registry.last, a, b])


def test_the_optional_upstream_opens_nothing_while_a_required_one_is_missing() -> None:
    registry = two_required_one_optional()
    registry.register("tb_a", ano_mes=202305)
    assert registry.register("tb_opt", ano_mes=202305) == []


def test_an_optional_upstream_execution_counts_among_the_triggers() -> None:
    registry = two_required_one_optional()
    a = registry.execution("tb_a", ano_mes=202305).id
    optional = registry.execution("tb_opt", ano_mes=202305).id
    (opened,) = registry.register("tb_b", ano_mes=202305)
    assert sorted(opened.triggers) == sorted([registry.last, a, optional])


# --- date + region, an upstream without region (definitions/vendas) ----------------------------------

VENDAS_DIARIAS = spec("tb_vendas_diarias", [part("data_venda", "date"), part("regiao", "string")])
CAMBIO = spec("tb_cambio_diario", [part("dt_cotacao", "date")])
PROMOCOES = spec("tb_promocoes", [part("data_venda", "date"), part("regiao", "string", required=False)])
CONSOLIDADAS = spec(
    "tb_vendas_consolidadas",
    [part("data_venda", "date"), part("regiao", "string")],
    [
        dep("tb_vendas_diarias"),
        dep("tb_cambio_diario", data_venda="dt_cotacao"),
        dep("tb_promocoes", required=False),
    ],
)
DAY, NEXT_DAY = "2024-05-01", "2024-05-02"


def vendas() -> Registry:
    return Registry(VENDAS_DIARIAS, CAMBIO, PROMOCOES, CONSOLIDADAS)


def test_the_exchange_rate_opens_one_run_per_region_of_that_day() -> None:
    registry = vendas()
    sul = registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="sul").id
    norte = registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="norte").id
    registry.execution("tb_vendas_diarias", data_venda=NEXT_DAY, regiao="leste")
    opened = registry.register("tb_cambio_diario", dt_cotacao=DAY)
    rate = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_vendas_consolidadas", {"data_venda": DAY, "regiao": "sul"}, [rate, sul]),
            Opening("tb_vendas_consolidadas", {"data_venda": DAY, "regiao": "norte"}, [rate, norte]),
        ]
    )
    assert all(o.triggers[0] == rate for o in opened)


def test_the_exchange_rate_probes_by_the_day_under_each_upstream_s_name() -> None:
    registry = vendas()
    execution = registry.execution("tb_cambio_diario", dt_cotacao=DAY)
    assert sorted(probes(registry.graph, execution), key=repr) == [
        Probe("tb_promocoes", "data_venda", DAY),
        Probe("tb_vendas_diarias", "data_venda", DAY),
    ]


def test_regional_sales_open_just_that_region_when_the_rate_exists() -> None:
    registry = vendas()
    registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="norte")
    rate = registry.execution("tb_cambio_diario", dt_cotacao=DAY).id
    opened = registry.register("tb_vendas_diarias", data_venda=DAY, regiao="sul")
    assert opened == [
        Opening("tb_vendas_consolidadas", {"data_venda": DAY, "regiao": "sul"}, [registry.last, rate])
    ]


def test_regional_sales_probe_the_rate_by_its_own_partition_name() -> None:
    registry = vendas()
    execution = registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="sul")
    found = probes(registry.graph, execution)
    assert Probe("tb_cambio_diario", "dt_cotacao", DAY) in found
    assert all(p.table != "tb_cambio_diario" or p.partition == "dt_cotacao" for p in found)


def test_without_the_exchange_rate_nothing_opens() -> None:
    registry = vendas()
    registry.execution("tb_cambio_diario", dt_cotacao=NEXT_DAY)
    assert registry.register("tb_vendas_diarias", data_venda=DAY, regiao="sul") == []
    assert registry.register("tb_vendas_diarias", data_venda=DAY, regiao="norte") == []
    assert registry.register("tb_promocoes", data_venda=DAY, regiao="sul") == []


def test_a_promotion_without_region_opens_every_region_of_its_day() -> None:
    registry = vendas()
    sul = registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="sul").id
    norte = registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="norte").id
    registry.execution("tb_vendas_diarias", data_venda=NEXT_DAY, regiao="sul")
    rate = registry.execution("tb_cambio_diario", dt_cotacao=DAY).id
    opened = registry.register("tb_promocoes", data_venda=DAY)
    promo = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_vendas_consolidadas", {"data_venda": DAY, "regiao": "sul"}, [promo, sul, rate]),
            Opening("tb_vendas_consolidadas", {"data_venda": DAY, "regiao": "norte"}, [promo, norte, rate]),
        ]
    )


# --- partition_map: a renamed partition --------------------------------------------------------------


def renamed() -> Registry:
    return Registry(
        spec("tb_base", [part("ano_mes")]),
        spec("tb_competencias", [part("competencia")]),
        spec("tb_d", [part("ano_mes")], [dep("tb_base"), dep("tb_competencias", ano_mes="competencia")]),
    )


def test_probes_ask_for_the_upstream_s_partition_name() -> None:
    registry = renamed()
    base = registry.execution("tb_base", ano_mes=202305)
    assert probes(registry.graph, base) == [Probe("tb_competencias", "competencia", 202305)]
    mapped = registry.execution("tb_competencias", competencia=202305)
    assert probes(registry.graph, mapped) == [Probe("tb_base", "ano_mes", 202305)]


def test_a_renamed_partition_opens_the_run_under_the_dependent_s_name() -> None:
    registry = renamed()
    assert registry.register("tb_base", ano_mes=202305) == []
    assert registry.register("tb_competencias", competencia=202306) == []
    base = registry.executions[0].id
    opened = registry.register("tb_competencias", competencia=202305)
    assert opened == [Opening("tb_d", {"ano_mes": 202305}, [registry.last, base])]


def test_the_renamed_side_opens_the_run_when_the_other_side_arrives_last() -> None:
    registry = renamed()
    mapped = registry.execution("tb_competencias", competencia=202305).id
    opened = registry.register("tb_base", ano_mes=202305)
    assert opened == [Opening("tb_d", {"ano_mes": 202305}, [registry.last, mapped])]


# --- canonical values --------------------------------------------------------------------------------


def test_zero_padded_and_plain_ints_are_one_partition() -> None:
    registry = two_required_one_optional()
    registry.register("tb_a", ano_mes="0202305")
    a = registry.last
    opened = registry.register("tb_b", ano_mes="202305")
    assert opened == [Opening("tb_d", {"ano_mes": 202305}, [registry.last, a])]


def test_zero_padded_and_plain_registrations_open_the_same_run_key() -> None:
    registry = Registry(PREP, ENRIQUECIDO)
    (padded,) = registry.register("tbjf001_op_pdz_prep", ano_mes_referencia="0202305")
    (plain,) = registry.register("tbjf001_op_pdz_prep", ano_mes_referencia=202305)
    assert key_text(padded.key) == key_text(plain.key)


# --- re-publication and distinct partitions ----------------------------------------------------------


def test_a_republished_upstream_partition_opens_the_gate_again() -> None:
    registry = Registry(PREP, ENRIQUECIDO)
    first = registry.register("tbjf001_op_pdz_prep", ano_mes_referencia=202305)
    second = registry.register("tbjf001_op_pdz_prep", ano_mes_referencia=202305)
    assert first == [Opening("tb_op_enriquecido", {"ano_mes_referencia": 202305}, [1])]
    assert second == [Opening("tb_op_enriquecido", {"ano_mes_referencia": 202305}, [2])]


def test_a_republished_required_upstream_reopens_with_the_newest_execution() -> None:
    registry = two_required_one_optional()
    registry.execution("tb_a", ano_mes=202305)
    b = registry.execution("tb_b", ano_mes=202305).id
    opened = registry.register("tb_a", ano_mes=202305)
    assert opened == [Opening("tb_d", {"ano_mes": 202305}, [registry.last, b])]


def test_two_partitions_of_a_never_run_dependent_open_two_runs() -> None:
    registry = Registry(PREP, ENRIQUECIDO)
    (may,) = registry.register("tbjf001_op_pdz_prep", ano_mes_referencia=202305)
    (june,) = registry.register("tbjf001_op_pdz_prep", ano_mes_referencia=202306)
    assert may.key == {"ano_mes_referencia": 202305}
    assert june.key == {"ano_mes_referencia": 202306}
    assert key_text(may.key) != key_text(june.key)
    assert (may.triggers, june.triggers) == ([1], [2])


# --- optional partitions -----------------------------------------------------------------------------


def optional_region() -> Registry:
    """tb_d (dt, regiao) needs tb_v (dt, regiao) and tb_p, whose regiao is optional."""
    return Registry(
        spec("tb_v", [part("dt", "date"), part("regiao", "string")]),
        spec("tb_p", [part("dt", "date"), part("regiao", "string", required=False)]),
        spec("tb_d", [part("dt", "date"), part("regiao", "string")], [dep("tb_v"), dep("tb_p")]),
    )


def test_an_execution_omitting_an_optional_partition_agrees_with_every_value() -> None:
    registry = optional_region()
    sul = registry.execution("tb_v", dt=DAY, regiao="sul").id
    norte = registry.execution("tb_v", dt=DAY, regiao="norte").id
    registry.execution("tb_v", dt=NEXT_DAY, regiao="sul")
    opened = registry.register("tb_p", dt=DAY)
    p = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_d", {"dt": DAY, "regiao": "sul"}, [p, sul]),
            Opening("tb_d", {"dt": DAY, "regiao": "norte"}, [p, norte]),
        ]
    )


def test_a_stored_execution_omitting_an_optional_partition_satisfies_any_value() -> None:
    registry = optional_region()
    p = registry.execution("tb_p", dt=DAY).id
    opened = registry.register("tb_v", dt=DAY, regiao="sul")
    assert opened == [Opening("tb_d", {"dt": DAY, "regiao": "sul"}, [registry.last, p])]


def test_a_given_optional_value_must_agree() -> None:
    registry = optional_region()
    registry.execution("tb_p", dt=DAY, regiao="norte")
    assert registry.register("tb_v", dt=DAY, regiao="sul") == []


def test_a_key_reached_through_several_executions_opens_once() -> None:
    """tb_p's executions with and without regiao both lead to (DAY, sul): one opening, not two."""
    registry = Registry(
        spec("tb_t", [part("dt", "date")]),
        spec("tb_p", [part("dt", "date"), part("regiao", "string", required=False)]),
        spec("tb_v", [part("dt", "date"), part("regiao", "string")]),
        spec("tb_d", [part("dt", "date"), part("regiao", "string")], [dep("tb_t"), dep("tb_p"), dep("tb_v")]),
    )
    registry.execution("tb_p", dt=DAY)
    regional = registry.execution("tb_p", dt=DAY, regiao="sul").id
    v = registry.execution("tb_v", dt=DAY, regiao="sul").id
    opened = registry.register("tb_t", dt=DAY)
    assert opened == [Opening("tb_d", {"dt": DAY, "regiao": "sul"}, [registry.last, regional, v])]


def test_a_dependent_s_optional_partition_provided_by_nobody_is_left_out_of_the_key() -> None:
    registry = Registry(
        spec("tb_u", [part("dt", "date")]),
        spec("tb_d", [part("dt", "date"), part("regiao", "string", required=False)], [dep("tb_u")]),
    )
    opened = registry.register("tb_u", dt=DAY)
    assert opened == [Opening("tb_d", {"dt": DAY}, [registry.last])]
    assert "regiao" not in opened[0].key


def test_a_given_optional_partition_is_part_of_the_dependent_s_key() -> None:
    registry = Registry(
        spec("tb_u", [part("dt", "date"), part("regiao", "string", required=False)]),
        spec("tb_d", [part("dt", "date"), part("regiao", "string", required=False)], [dep("tb_u")]),
    )
    (regional,) = registry.register("tb_u", dt=DAY, regiao="sul")
    (national,) = registry.register("tb_u", dt=DAY)
    assert regional.key == {"dt": DAY, "regiao": "sul"}
    assert national.key == {"dt": DAY}
    assert key_text(regional.key) != key_text(national.key)


def regional_optional_upstream() -> Registry:
    """tb_d (dt, optional regiao) needs tb_u (dt); only the optional tb_p (dt, regiao) carries regiao."""
    return Registry(
        spec("tb_u", [part("dt", "date")]),
        spec("tb_p", [part("dt", "date"), part("regiao", "string")]),
        spec(
            "tb_d",
            [part("dt", "date"), part("regiao", "string", required=False)],
            [dep("tb_u"), dep("tb_p", required=False)],
        ),
    )


def test_an_optional_upstream_s_value_of_an_optional_partition_is_part_of_the_key() -> None:
    registry = regional_optional_upstream()
    u = registry.execution("tb_u", dt=DAY).id
    opened = registry.register("tb_p", dt=DAY, regiao="sul")
    assert opened == [Opening("tb_d", {"dt": DAY, "regiao": "sul"}, [registry.last, u])]


def test_a_republished_required_upstream_reopens_keys_completed_by_an_optional_one() -> None:
    """DESIGN §4: keys take D's other partitions from D's other dependencies, and a re-registered upstream
    partition opens the gate again. (DAY, sul) was opened by tb_p and its gate is open, so re-publishing
    tb_u for DAY re-runs it as well as (DAY)."""
    registry = regional_optional_upstream()
    assert keys_of(registry.register("tb_u", dt=DAY)) == [{"dt": DAY}]
    assert keys_of(registry.register("tb_p", dt=DAY, regiao="sul")) == [{"dt": DAY, "regiao": "sul"}]
    p = registry.last
    opened = registry.register("tb_u", dt=DAY)
    u = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_d", {"dt": DAY}, [u, p]),
            Opening("tb_d", {"dt": DAY, "regiao": "sul"}, [u, p]),
        ]
    )


# --- dependencies that share no partition with the trigger -------------------------------------------


def region_by_day() -> Registry:
    """tb_d (dt, regiao) needs tb_dias (dt) and tb_regioes (regiao): neither determines the other."""
    return Registry(
        spec("tb_dias", [part("dt", "date")]),
        spec("tb_regioes", [part("regiao", "string")]),
        spec(
            "tb_d",
            [part("dt", "date"), part("regiao", "string")],
            [dep("tb_dias"), dep("tb_regioes")],
        ),
    )


def test_a_dependency_sharing_nothing_with_the_trigger_is_probed_whole() -> None:
    registry = region_by_day()
    execution = registry.execution("tb_dias", dt=DAY)
    assert probes(registry.graph, execution) == [Probe("tb_regioes")]


def test_every_execution_of_an_unshared_dependency_gives_one_key() -> None:
    registry = region_by_day()
    sul = registry.execution("tb_regioes", regiao="sul").id
    norte = registry.execution("tb_regioes", regiao="norte").id
    opened = registry.register("tb_dias", dt=DAY)
    day = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_d", {"dt": DAY, "regiao": "sul"}, [day, sul]),
            Opening("tb_d", {"dt": DAY, "regiao": "norte"}, [day, norte]),
        ]
    )


def test_a_new_value_of_the_unshared_side_opens_it_for_every_value_of_the_other() -> None:
    registry = region_by_day()
    first = registry.execution("tb_dias", dt=DAY).id
    second = registry.execution("tb_dias", dt=NEXT_DAY).id
    opened = registry.register("tb_regioes", regiao="leste")
    leste = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_d", {"dt": DAY, "regiao": "leste"}, [leste, first]),
            Opening("tb_d", {"dt": NEXT_DAY, "regiao": "leste"}, [leste, second]),
        ]
    )


def test_unshared_dependencies_give_every_combination() -> None:
    registry = Registry(
        spec("tb_dias", [part("dt", "date")]),
        spec("tb_regioes", [part("regiao", "string")]),
        spec("tb_canais", [part("canal", "string")]),
        spec(
            "tb_d",
            [part("dt", "date"), part("regiao", "string"), part("canal", "string")],
            [dep("tb_dias"), dep("tb_regioes"), dep("tb_canais")],
        ),
    )
    for regiao in ("sul", "norte"):
        registry.execution("tb_regioes", regiao=regiao)
    for canal in ("loja", "web", "app"):
        registry.execution("tb_canais", canal=canal)
    opened = registry.register("tb_dias", dt=DAY)
    assert sorted(key_text(k) for k in keys_of(opened)) == sorted(
        key_text({"dt": DAY, "regiao": r, "canal": c})
        for r in ("sul", "norte")
        for c in ("loja", "web", "app")
    )


def config_table() -> Registry:
    """tb_d (dt) needs tb_u (dt) and tb_config, which has a partition tb_d does not have."""
    return Registry(
        spec("tb_u", [part("dt", "date")]),
        spec("tb_config", [part("versao")]),
        spec("tb_d", [part("dt", "date")], [dep("tb_u"), dep("tb_config")]),
    )


def test_any_execution_of_a_dependency_sharing_no_partition_satisfies_the_gate() -> None:
    registry = config_table()
    assert registry.register("tb_u", dt=DAY) == []
    registry.execution("tb_config", versao=1)
    config = registry.execution("tb_config", versao=2).id
    opened = registry.register("tb_u", dt=NEXT_DAY)
    assert opened == [Opening("tb_d", {"dt": NEXT_DAY}, [registry.last, config])]


def test_a_dependency_sharing_no_partition_reopens_every_key_of_the_dependent() -> None:
    registry = config_table()
    first = registry.execution("tb_u", dt=DAY).id
    second = registry.execution("tb_u", dt=NEXT_DAY).id
    opened = registry.register("tb_config", versao=3)
    config = registry.last
    assert probes(registry.graph, registry.executions[-1]) == [Probe("tb_u")]
    assert normal(opened) == normal(
        [Opening("tb_d", {"dt": DAY}, [config, first]), Opening("tb_d", {"dt": NEXT_DAY}, [config, second])]
    )


# --- gate, for explain -------------------------------------------------------------------------------


def test_gate_reports_every_dependency_in_definition_order() -> None:
    registry = vendas()
    old = registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="sul")
    registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="norte")
    rate = registry.execution("tb_cambio_diario", dt_cotacao=DAY)
    new = registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="sul")
    registry.execution("tb_vendas_diarias", data_venda=NEXT_DAY, regiao="sul")
    statuses = gate(
        registry.graph, CONSOLIDADAS, {"data_venda": DAY, "regiao": "sul"}, by_table(registry.executions)
    )
    assert new.id > old.id
    assert statuses == [
        DependencyStatus("tb_vendas_diarias", True, new),
        DependencyStatus("tb_cambio_diario", True, rate),
        DependencyStatus("tb_promocoes", False, None),
    ]


def test_gate_reports_a_missing_required_dependency_as_unsatisfied() -> None:
    registry = vendas()
    registry.execution("tb_vendas_diarias", data_venda=DAY, regiao="sul")
    registry.execution("tb_cambio_diario", dt_cotacao=NEXT_DAY)
    promo = registry.execution("tb_promocoes", data_venda=DAY)
    statuses = gate(
        registry.graph, CONSOLIDADAS, {"data_venda": DAY, "regiao": "sul"}, by_table(registry.executions)
    )
    assert [(s.dependency, s.required, s.satisfied_by) for s in statuses] == [
        ("tb_vendas_diarias", True, registry.executions[0]),
        ("tb_cambio_diario", True, None),
        ("tb_promocoes", False, promo),
    ]


def test_gate_picks_the_newest_execution_even_when_it_omits_an_optional_partition() -> None:
    registry = vendas()
    registry.execution("tb_promocoes", data_venda=DAY, regiao="sul")
    newest = registry.execution("tb_promocoes", data_venda=DAY)
    registry.execution("tb_promocoes", data_venda=DAY, regiao="norte")
    statuses = gate(
        registry.graph, CONSOLIDADAS, {"data_venda": DAY, "regiao": "sul"}, by_table(registry.executions)
    )
    assert statuses[2] == DependencyStatus("tb_promocoes", False, newest)


def test_gate_of_a_table_without_dependencies_is_empty() -> None:
    assert gate(Graph([PREP]), PREP, {"ano_mes_referencia": 202305}, {}) == []


# --- several dependents ------------------------------------------------------------------------------


def fan_out() -> Registry:
    """tb_u feeds tb_only_u, tb_needs_v (tb_v required too) and tb_maybe_w (tb_w optional)."""
    return Registry(
        spec("tb_u", [part("ano_mes")]),
        spec("tb_v", [part("ano_mes")]),
        spec("tb_w", [part("ano_mes")]),
        spec("tb_only_u", [part("ano_mes")], [dep("tb_u")]),
        spec("tb_needs_v", [part("ano_mes")], [dep("tb_u"), dep("tb_v")]),
        spec("tb_maybe_w", [part("ano_mes")], [dep("tb_u"), dep("tb_w", required=False)]),
    )


def test_one_registration_opens_each_dependent_whose_gate_is_open() -> None:
    registry = fan_out()
    registry.execution("tb_v", ano_mes=202306)
    opened = registry.register("tb_u", ano_mes=202305)
    u = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_only_u", {"ano_mes": 202305}, [u]),
            Opening("tb_maybe_w", {"ano_mes": 202305}, [u]),
        ]
    )


def test_one_registration_opens_every_dependent_once_all_are_satisfied() -> None:
    registry = fan_out()
    v = registry.execution("tb_v", ano_mes=202305).id
    w = registry.execution("tb_w", ano_mes=202305).id
    opened = registry.register("tb_u", ano_mes=202305)
    u = registry.last
    assert normal(opened) == normal(
        [
            Opening("tb_only_u", {"ano_mes": 202305}, [u]),
            Opening("tb_needs_v", {"ano_mes": 202305}, [u, v]),
            Opening("tb_maybe_w", {"ano_mes": 202305}, [u, w]),
        ]
    )


# --- MAX_OPENINGS guard ------------------------------------------------------------------------------


def test_at_most_max_openings_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller.core.gates, "MAX_OPENINGS", 3)
    registry = config_table()
    for day in ("2024-05-01", "2024-05-02", "2024-05-03"):
        registry.execution("tb_u", dt=day)
    assert len(registry.register("tb_config", versao=1)) == 3


def test_more_than_max_openings_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller.core.gates, "MAX_OPENINGS", 3)
    registry = config_table()
    for day in ("2024-05-01", "2024-05-02", "2024-05-03", "2024-05-04"):
        registry.execution("tb_u", dt=day)
    execution = registry.execution("tb_config", versao=1)
    with pytest.raises(ValueError, match="more than 3 runs"):
        openings(registry.graph, execution, by_table(registry.executions))


def test_the_guard_counts_openings_of_every_dependent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller.core.gates, "MAX_OPENINGS", 2)
    registry = fan_out()
    registry.execution("tb_v", ano_mes=202305)
    execution = registry.execution("tb_u", ano_mes=202305)
    with pytest.raises(ValueError, match="more than 2 runs"):
        openings(registry.graph, execution, by_table(registry.executions))


# --- any_of groups (DESIGN §4) -----------------------------------------------------------------------


def group(*members: str | dict[str, Any], required: bool = True) -> dict[str, Any]:
    """An ``any_of`` group of ``members`` (a name, or ``{dependency_name, partition_map}``)."""
    return {"any_of": list(members), "is_required": required}


def full_or_delta(*, required: bool = True) -> Registry:
    """``tb_d`` needs ``tb_a`` and either ``tb_full`` (by ``dt``) or ``tb_delta`` (by its ``day``)."""
    return Registry(
        spec("tb_a", [part("dt", "date")]),
        spec("tb_full", [part("dt", "date")]),
        spec("tb_delta", [part("day", "date")]),
        spec(
            "tb_d",
            [part("dt", "date")],
            [
                dep("tb_a"),
                group(
                    "tb_full",
                    {"dependency_name": "tb_delta", "partition_map": {"dt": "day"}},
                    required=required,
                ),
            ],
        ),
    )


def test_a_required_group_blocks_until_one_member_is_present() -> None:
    registry = full_or_delta()
    assert registry.register("tb_a", dt="2024-01-01") == []


def test_either_member_of_a_required_group_opens_the_gate() -> None:
    for member, values in (("tb_full", {"dt": "2024-01-01"}), ("tb_delta", {"day": "2024-01-01"})):
        registry = full_or_delta()
        a = registry.execution("tb_a", dt="2024-01-01").id
        opened = registry.register(member, **values)
        assert opened == [Opening("tb_d", {"dt": "2024-01-01"}, [registry.last, a])], member


def test_a_member_is_compared_through_its_own_partition_map() -> None:
    registry = full_or_delta()
    registry.execution("tb_a", dt="2024-01-01")
    assert registry.register("tb_delta", day="2024-01-02") == []
    opened = registry.register("tb_delta", day="2024-01-01")
    assert keys_of(opened) == [{"dt": "2024-01-01"}]


def test_the_required_upstream_opens_the_gate_when_any_member_is_present() -> None:
    registry = full_or_delta()
    delta = registry.execution("tb_delta", day="2024-01-01").id
    opened = registry.register("tb_a", dt="2024-01-01")
    assert opened == [Opening("tb_d", {"dt": "2024-01-01"}, [registry.last, delta])]


def test_the_newest_execution_of_any_member_satisfies_the_group() -> None:
    registry = full_or_delta()
    registry.execution("tb_full", dt="2024-01-01")
    delta = registry.execution("tb_delta", day="2024-01-01").id
    opened = registry.register("tb_a", dt="2024-01-01")
    assert opened[0].triggers == [registry.last, delta]
    statuses = gate(
        registry.graph, registry.graph.tables["tb_d"], {"dt": "2024-01-01"}, by_table(registry.executions)
    )
    assert [(s.dependency, s.members, s.satisfied_by and s.satisfied_by.table) for s in statuses] == [
        ("tb_a", (), "tb_a"),
        ("any_of(tb_full, tb_delta)", ("tb_full", "tb_delta"), "tb_delta"),
    ]


def test_a_re_registered_member_opens_the_gate_again() -> None:
    registry = full_or_delta()
    registry.execution("tb_a", dt="2024-01-01")
    first = registry.register("tb_full", dt="2024-01-01")
    again = registry.register("tb_full", dt="2024-01-01")
    other = registry.register("tb_delta", day="2024-01-01")
    assert keys_of(first) == keys_of(again) == keys_of(other) == [{"dt": "2024-01-01"}]


def test_an_optional_group_never_blocks_and_its_members_open_gates() -> None:
    registry = full_or_delta(required=False)
    assert keys_of(registry.register("tb_a", dt="2024-01-01")) == [{"dt": "2024-01-01"}]
    assert keys_of(registry.register("tb_delta", day="2024-01-01")) == [{"dt": "2024-01-01"}]
    assert registry.register("tb_delta", day="2024-01-05") == []  # tb_a is required and absent there


def test_a_group_fills_a_partition_the_trigger_does_not_give() -> None:
    registry = Registry(
        spec("tb_a", [part("dt", "date")]),
        spec("tb_x", [part("dt", "date"), part("region", "string")]),
        spec("tb_y", [part("dt", "date"), part("region", "string")]),
        spec("tb_d", [part("dt", "date"), part("region", "string")], [dep("tb_a"), group("tb_x", "tb_y")]),
    )
    registry.execution("tb_x", dt="2024-01-01", region="eu")
    registry.execution("tb_y", dt="2024-01-01", region="us")
    opened = registry.register("tb_a", dt="2024-01-01")
    assert sorted(key_text(k) for k in keys_of(opened)) == sorted(
        key_text({"dt": "2024-01-01", "region": r}) for r in ("eu", "us")
    )


def test_the_lock_partitions_are_those_every_member_shares() -> None:
    registry = full_or_delta()
    d = registry.graph.tables["tb_d"]
    assert registry.graph.lock_partitions(d) == ("dt",)
    wider = Registry(
        spec("tb_a", [part("dt", "date")]),
        spec("tb_m", [part("month", "int")]),
        spec(
            "tb_d",
            [part("dt", "date"), part("month", "int", required=False)],
            [dep("tb_a"), group("tb_a2", "tb_m")],
        ),
        spec("tb_a2", [part("dt", "date")]),
    )
    assert wider.graph.lock_partitions(wider.graph.tables["tb_d"]) == ()
