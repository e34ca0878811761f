"""Realistic generated definition sets: one table per file, a DAG of dependencies, tasks with templates.

The shape follows ``definitions/``: 1–3 partitions drawn from a small vocabulary whose names always
carry the same type (so shared partitions never disagree), 0–4 dependencies on earlier tables (a DAG),
1–2 tasks of the four kinds with valid targets and ``{{ partitions.x }}`` templates, some approvals and
a spread of debounce values. Every required partition of a dependent table comes from one of its
required dependencies (directly or through a ``partition_map``); extra ones are optional. The output
is deterministic for a ``seed``, and ``flux-control validate`` reports no problem on it.

    python -m bench.generate DIRECTORY COUNT [--seed N]
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA_COMMENT = "# yaml-language-server: $schema=../../schemas/table.schema.json\n"
ACCOUNT = "123456789012"
REGION = "us-east-1"

#: Partition names and their one type. ``dt_cotacao`` is a date under another name: dependents map
#: their ``dt`` onto it with ``partition_map`` (like the exchange-rate table of ``definitions/``).
PARTITION_TYPES = {
    "ano_mes": "int",
    "dt": "date",
    "dt_cotacao": "date",
    "regiao": "string",
    "canal": "string",
}
#: Root partition sets, with weights: monthly, daily, daily by region/channel, an exchange-rate style date.
ROOT_SHAPES: list[tuple[tuple[str, ...], int]] = [
    (("ano_mes",), 30),
    (("dt",), 20),
    (("dt", "regiao"), 15),
    (("ano_mes", "regiao"), 10),
    (("dt", "canal"), 8),
    (("dt", "regiao", "canal"), 7),
    (("ano_mes", "canal"), 5),
    (("dt_cotacao",), 5),
]
DOMAINS = ("operacoes", "vendas", "financeiro", "marketing", "logistica", "risco", "credito", "cadastro")
NOUNS = (
    "clientes",
    "contratos",
    "pagamentos",
    "saldos",
    "vendas",
    "pedidos",
    "estoque",
    "cotacoes",
    "limites",
    "ofertas",
    "entregas",
    "indicadores",
    "faturas",
    "cobrancas",
)
STAGES = ("prep", "enriquecido", "consolidado", "agregado", "publicado", "historico")
SQUADS = ("squad-dados", "squad-vendas", "squad-financeiro", "squad-risco", "squad-marketing")
APPROVERS = ("lrcxpnu", "mfsouza", "aprado", "jkimura", "tbarros", "rlemos")
DEBOUNCES = (0, 30, 60, 60, 120, 300, 300, 600, 900, 1800, 3600)
TASK_TYPES = ("glue", "glue", "glue", "step_function", "step_function", "sqs", "lambda")


@dataclass(slots=True)
class _Table:
    name: str
    domain: str
    partitions: list[tuple[str, bool]]  # (name, is_required)
    dependencies: list[tuple[str, bool, dict[str, str]]] = field(default_factory=list)

    @property
    def partition_names(self) -> set[str]:
        return {name for name, _ in self.partitions}


def write_definitions(directory: str | Path, count: int, seed: int = 1) -> list[Path]:
    """Write ``count`` definition files under ``directory/<domain>/``; returns their paths in order."""
    rng = random.Random(seed)
    root = Path(directory)
    tables: list[_Table] = []
    paths: list[Path] = []
    for index in range(count):
        table = _new_table(rng, index, tables)
        tables.append(table)
        path = root / table.domain / f"{table.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render(rng, table), encoding="utf-8")
        paths.append(path)
    return paths


def _new_table(rng: random.Random, index: int, earlier: list[_Table]) -> _Table:
    domain = rng.choice(DOMAINS)
    name = f"tb_{domain[:4]}_{rng.choice(NOUNS)}_{rng.choice(STAGES)}_{index:05d}"
    # About one table in eight is a root (an external job registers it); the first few always are.
    dependency_count = 0 if index < 5 or rng.random() < 0.12 else rng.choice((1, 1, 1, 2, 2, 3, 4))
    if dependency_count == 0:
        shape = _weighted(rng, ROOT_SHAPES)
        return _Table(name, domain, [(p, True) for p in shape])
    # The first dependency fixes the table's grain; further ones are earlier tables that share at least
    # one partition with it (near ones more often: pipelines are mostly chains of recent steps).
    first = earlier[_recent_index(rng, len(earlier))]
    partitions = [(p, True) for p in sorted(first.partition_names, key=_partition_order)]
    partitions = [("dt", True) if p == "dt_cotacao" else (p, r) for p, r in partitions]
    if len(partitions) < 3 and rng.random() < 0.15:  # an extra dimension no upstream provides: optional
        extra = rng.choice([p for p in ("regiao", "canal") if p not in dict(partitions)] or ["canal"])
        if extra not in dict(partitions):
            partitions.append((extra, False))
    table = _Table(name, domain, partitions)
    chosen = {first.name}
    table.dependencies.append((first.name, True, _mapping(table, first)))
    own = dict(partitions)
    for _ in range(40):
        if len(table.dependencies) >= dependency_count:
            break
        candidate = earlier[_recent_index(rng, len(earlier))]
        if candidate.name in chosen:
            continue
        mapping = _mapping(table, candidate)
        shared = {mapping.get(p, p) for p in own} & candidate.partition_names
        if not shared:
            continue
        chosen.add(candidate.name)
        table.dependencies.append((candidate.name, rng.random() > 0.2, mapping))
    return table


def _mapping(table: _Table, upstream: _Table) -> dict[str, str]:
    """``{dt: dt_cotacao}`` when the upstream names its date that way and the table has a ``dt``."""
    if "dt_cotacao" in upstream.partition_names and "dt" in table.partition_names:
        return {"dt": "dt_cotacao"}
    return {}


def _recent_index(rng: random.Random, size: int) -> int:
    """An index into ``size`` earlier tables, skewed toward the most recent ones."""
    if rng.random() < 0.7:
        return max(0, size - 1 - int(rng.expovariate(1 / 30)))
    return rng.randrange(size)


def _weighted(rng: random.Random, choices: list[tuple[tuple[str, ...], int]]) -> tuple[str, ...]:
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _partition_order(name: str) -> int:
    return list(PARTITION_TYPES).index(name)


def _render(rng: random.Random, table: _Table) -> str:
    lines = [SCHEMA_COMMENT.rstrip("\n")]
    if not table.dependencies:
        lines.append("# Root table: produced by an external job that registers its executions.")
    words = table.name.split("_")
    lines += [
        "version: 1",
        f"name: {table.name}",
        f"description: {_quoted(f'Tabela de {words[2]} ({words[3]}) do domínio {table.domain}')}",
        f"owner: {rng.choice(SQUADS)}",
    ]
    if rng.random() < 0.15:
        lines.append("requires_approval: true")
        lines.append(f"approvers: [{', '.join(rng.sample(APPROVERS, rng.randint(1, 3)))}]")
    debounce = rng.choice(DEBOUNCES)
    lines.append(f"debounce_seconds: {debounce}")
    if debounce and rng.random() < 0.3:
        lines.append(f"max_wait_seconds: {debounce * rng.choice((4, 6, 12))}")
    lines.append("partitions:")
    for name, required in table.partitions:
        lines.append(f"  - {{name: {name}, type: {PARTITION_TYPES[name]}, is_required: {_bool(required)}}}")
    if table.dependencies:
        lines.append("dependencies:")
    for name, required, mapping in table.dependencies:
        if mapping:
            pairs = ", ".join(f"{k}: {v}" for k, v in mapping.items())
            lines += [
                f"  - dependency_name: {name}",
                f"    is_required: {_bool(required)}",
                f"    partition_map: {{{pairs}}}",
            ]
        else:
            lines.append(f"  - {{dependency_name: {name}, is_required: {_bool(required)}}}")
    lines.append("tasks:")
    kinds = rng.sample(TASK_TYPES, rng.choice((1, 1, 2)))
    aliases: set[str] = set()
    for kind in kinds:
        lines += _task(rng, table, kind, aliases)
    return "\n".join(lines) + "\n"


def _task(rng: random.Random, table: _Table, kind: str, aliases: set[str]) -> list[str]:
    alias = {"glue": "build", "step_function": "orchestrate", "sqs": "notify", "lambda": "publish"}[kind]
    if alias in aliases:
        alias = f"{alias}-2"
    aliases.add(alias)
    short = table.name[3:]
    required = [p for p, is_required in table.partitions if is_required]
    templates = {p: f"{{{{ partitions.{p} }}}}" for p in required}
    if kind == "glue":
        target = f"job-{short.replace('_', '-')}"
        params: dict[str, object] = {f"--{p}": t for p, t in templates.items()}
        if rng.random() < 0.4:
            params["--enable-metrics"] = "true"
        if rng.random() < 0.3:
            params["--workers"] = rng.choice((2, 5, 10))
    elif kind == "step_function":
        target = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm-{short.replace('_', '-')}"
        params = {**dict(templates), "tabela": "{{ table.name }}"}
        if rng.random() < 0.5:
            params["gatilhos"] = "{{ triggers | tojson }}"
    elif kind == "sqs":
        fifo = ".fifo" if rng.random() < 0.5 else ""
        target = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/q-{short.replace('_', '-')}{fifo}"
        keys = " ".join(f"{p}={t}" for p, t in templates.items())
        params = {"body": f"{{{{ table.name }}}} pronta: {keys}"}
    else:
        target = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fn-{short.replace('_', '-')}"
        params = {**dict(templates), "origem": "{{ table.name }}", "tentativa": "{{ run.attempt }}"}
    lines = [f"  - alias: {alias}", f"    type: {kind}", f"    target: {target}"]
    if rng.random() < 0.5:
        lines.append(f"    params: {json.dumps(params, ensure_ascii=False)}")
    else:
        lines.append("    params:")
        lines += [f"      {_key(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in params.items()]
    return lines


def _key(key: str) -> str:
    return json.dumps(key) if key.startswith("-") else key


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _bool(value: bool) -> str:
    return "true" if value else "false"


_DEBOUNCE = re.compile(rb"^debounce_seconds: (\d+)$", re.MULTILINE)
_MARK = "revisão"
_DESCRIPTION = re.compile(rb'^description: "(.*?)(?: \[' + _MARK.encode() + rb' \d+\])?"$', re.MULTILINE)


def _described(suffix: bytes) -> Callable[[re.Match[bytes]], bytes]:
    """A replacement of a description line: the description with ``suffix`` appended."""

    def replace(match: re.Match[bytes]) -> bytes:
        return b'description: "' + match[1] + suffix + b'"'

    return replace


def change_fraction(directory: str | Path, fraction: float, seed: int) -> list[Path]:
    """Edit ``fraction`` of the files under ``directory`` (at least one): a debounce or a description.

    Every edit changes the table's state whatever was there before (descriptions get a ``[revisão
    seed]`` suffix, debounce values move by 15 s), so calling it again with another seed changes the
    same share again. Returns the edited paths.
    """
    files = sorted(Path(directory).rglob("*.yaml"))
    rng = random.Random(seed)
    chosen = rng.sample(files, max(1, round(len(files) * fraction)))
    for position, path in enumerate(chosen):
        data = path.read_bytes()
        if position % 2 == 0:
            data = _DEBOUNCE.sub(lambda m: b"debounce_seconds: %d" % _next_debounce(int(m[1])), data, count=1)
        else:
            data = _DESCRIPTION.sub(_described(f" [{_MARK} {seed}]".encode()), data, count=1)
        path.write_bytes(data)
    return chosen


def _next_debounce(value: int) -> int:
    return value + 15 if value < 86_400 else 0


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__.split("\n")[0])
    parser.add_argument("directory")
    parser.add_argument("count", type=int)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    write_definitions(args.directory, args.count, args.seed)
    print(f"wrote {args.count:,} definitions under {args.directory}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
