"""A catalogue of invalid definition sets: each one gives exactly these problems, at these places.

Every check of DESIGN §2 appears here, with the exact message and position, so a change to any
message or position is a deliberate change to this file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.files.validation import validate_directory
from tests.conftest import WriteDefs

UPSTREAM = """
    version: 1
    name: up
    partitions:
      - {name: dt, type: date}
"""


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes]
    expected: list[str]
    max_bytes: int = 1024 * 1024
    extra: dict[str, str] = field(default_factory=dict)


def table(body: str, name: str = "down") -> str:
    """A definition whose first lines are always ``version`` (1) and ``name`` (2)."""
    return f"version: 1\nname: {name}\n{body.strip()}\n"


ALIAS_BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
    "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
    "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
    "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n"
    "h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"
    "i: [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n"
)

CASES = [
    Case(
        "malformed-yaml",
        {"a.yaml": "version: 1\nname: [a, b\npartitions: []\n"},
        ["defs/a.yaml:3:11: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence)"],
    ),
    Case(
        "empty-file",
        {"a.yaml": "", "up.yaml": UPSTREAM},
        ["defs/a.yaml:1:1: file holds no table definition (it is empty)"],
    ),
    Case(
        "comments-only-file",
        {"a.yaml": "# nothing here yet\n", "up.yaml": UPSTREAM},
        ["defs/a.yaml:1:1: file holds no table definition (it is empty)"],
    ),
    Case(
        "list-at-top-level",
        {"a.yaml": "- version: 1\n- name: a\n"},
        ["defs/a.yaml:1:1: a table definition must be a mapping of fields, got a list"],
    ),
    Case(
        "scalar-document",
        {"a.yaml": "just a sentence\n"},
        ["defs/a.yaml:1:1: a table definition must be a mapping of fields, got string 'just a sentence'"],
    ),
    Case(
        "duplicate-key",
        {"a.yaml": table("partitions: []\ndebounce_seconds: 5\ndebounce_seconds: 10", name="a")},
        ["defs/a.yaml:5:1: duplicate key 'debounce_seconds' (first at line 4); keep one of them"],
    ),
    Case(
        "non-string-key",
        {"a.yaml": table("partitions: []\n1: one", name="a")},
        ["defs/a.yaml:4:1: keys must be strings, got int '1'"],
    ),
    Case(
        "python-tag",
        {"a.yaml": table("partitions: []\ndescription: !!python/object/apply:os.system [id]", name="a")},
        [
            "defs/a.yaml:4:14: tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed: "
            "definitions are plain data"
        ],
    ),
    Case(
        "custom-tag",
        {"a.yaml": table("partitions: []\nowner: !team data", name="a")},
        ["defs/a.yaml:4:8: tag '!team' is not allowed: definitions are plain data"],
    ),
    Case(
        "merge-key",
        {"a.yaml": "base: &b {version: 1}\n<<: *b\nname: a\npartitions: []\n"},
        ["defs/a.yaml:2:1: merge keys (<<) are not supported; write the fields out"],
    ),
    Case(
        "oversize-file",
        {"a.yaml": table("description: " + "x" * 2000 + "\npartitions: []", name="a")},
        [
            "defs/a.yaml:1:1: file is 2,048 bytes, larger than the 1,024-byte limit; split it into several files"
        ],
        max_bytes=1024,
    ),
    Case(
        "alias-bomb",
        {"a.yaml": ALIAS_BOMB},
        [
            "defs/a.yaml:1:1: document expands to more than 10,000 values through aliases "
            "(an alias bomb?); write the values out instead"
        ],
    ),
    Case(
        "recursive-alias",
        {"a.yaml": table("partitions: &p [*p]", name="a")},
        ["defs/a.yaml:3:13: an alias refers to a value that contains it (recursive alias)"],
    ),
    Case(
        "nesting-too-deep",
        {"a.yaml": table("partitions: []\ndescription: " + "[" * 70 + "]" * 70, name="a")},
        ["defs/a.yaml:4:77: values nest deeper than 64 levels"],
    ),
    Case(
        "missing-required-field",
        {"a.yaml": "version: 1\nname: a\n"},
        ["defs/a.yaml:1:1: missing required field 'partitions'"],
    ),
    Case(
        "missing-field-in-partition",
        {"a.yaml": table("partitions:\n  - {name: dt}", name="a")},
        ["defs/a.yaml:4:5: missing required field 'type' in 'partitions[0]'"],
    ),
    Case(
        "wrong-type",
        {"a.yaml": table("partitions: []\ndebounce_seconds: '300'", name="a")},
        ["defs/a.yaml:4:19: 'debounce_seconds' must be an integer, got string '300'"],
    ),
    Case(
        "wrong-type-boolean",
        {"a.yaml": table("partitions: []\nrequires_approval: yes please", name="a")},
        ["defs/a.yaml:4:20: 'requires_approval' must be true or false, got string 'yes please'"],
    ),
    Case(
        "negative-debounce",
        {"a.yaml": table("partitions: []\ndebounce_seconds: -5", name="a")},
        ["defs/a.yaml:4:19: 'debounce_seconds' must be at least 0, got -5"],
    ),
    Case(
        "unknown-field-with-suggestion",
        {"a.yaml": table("partitions: []\ndebounce: 30", name="a")},
        ["defs/a.yaml:4:1: unknown field 'debounce' (did you mean 'debounce_seconds'?)"],
    ),
    Case(
        "unknown-field-nested",
        {"a.yaml": table("partitions:\n  - {name: dt, type: date, format: iso}", name="a")},
        ["defs/a.yaml:4:28: unknown field 'format' (allowed: is_required, name, type)"],
    ),
    Case(
        "bad-version",
        {"a.yaml": "version: 2\nname: a\npartitions: []\n"},
        ["defs/a.yaml:1:10: 'version' must be 1, got 2"],
    ),
    Case(
        "bad-table-name",
        {"a.yaml": "version: 1\nname: Tabela-1\npartitions: []\n"},
        [
            "defs/a.yaml:2:7: 'name' 'Tabela-1' is not valid: lowercase letters, digits and underscores, "
            "starting with a letter, at most 128 characters"
        ],
    ),
    Case(
        "bad-partition-type",
        {"a.yaml": table("partitions:\n  - {name: dt, type: timestamp}", name="a")},
        ["defs/a.yaml:4:22: 'partitions[0].type' must be one of int, string, date; got 'timestamp'"],
    ),
    Case(
        "bad-task-type",
        {"a.yaml": table("partitions: []\ntasks:\n  - {alias: t, type: athena, target: q}", name="a")},
        [
            "defs/a.yaml:5:22: 'tasks[0].type' must be one of glue, step_function, sqs, lambda, eventbridge, http; got 'athena'"
        ],
    ),
    Case(
        "step-function-target-not-an-arn",
        {
            "a.yaml": table(
                "partitions: []\ntasks:\n  - {alias: t, type: step_function, target: my-flow}", name="a"
            )
        },
        [
            "defs/a.yaml:5:45: 'tasks[0].target' 'my-flow' is not valid: a state machine ARN "
            "(arn:aws:states:REGION:ACCOUNT:stateMachine:NAME)"
        ],
    ),
    Case(
        "sqs-target-not-a-url",
        {"a.yaml": table("partitions: []\ntasks:\n  - {alias: t, type: sqs, target: my-queue}", name="a")},
        [
            "defs/a.yaml:5:35: 'tasks[0].target' 'my-queue' is not valid: an SQS queue URL "
            "(https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
        ],
    ),
    Case(
        "glue-params-must-be-flat",
        {
            "a.yaml": table(
                "partitions: []\ntasks:\n  - {alias: t, type: glue, target: job, params: {--x: {a: 1}}}",
                name="a",
            )
        },
        [
            "defs/a.yaml:5:55: 'tasks[0].params.--x' must be a string or a number or true or false, got a mapping"
        ],
    ),
    Case(
        "duplicate-approvers",
        {"a.yaml": table("partitions: []\napprovers: [ana, ana]", name="a")},
        ["defs/a.yaml:4:12: 'approvers' lists the same value more than once"],
    ),
    Case(
        "group-without-a-name",
        {"a.yaml": table("partitions: []\noperators: [group:data-platform, 'group:']", name="a")},
        [
            "defs/a.yaml:4:34: 'operators[1]' 'group:' is not valid: group:NAME needs the name of a "
            "Cognito group after 'group:', without spaces"
        ],
    ),
    Case(
        "session-arn-instead-of-the-role-arn",
        {
            "a.yaml": table(
                "partitions: []\nproducers: ['arn:aws:sts::123456789012:assumed-role/glue-etl/jr_1']",
                name="a",
            )
        },
        [
            "defs/a.yaml:4:13: 'producers[0]' 'arn:aws:sts::123456789012:assumed-role/glue-etl/jr_1' is not "
            "valid: a session's ARN (arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION) changes with every "
            "session; list the role ARN instead, arn:aws:iam::ACCOUNT:role/NAME, which matches any session "
            "of the role"
        ],
    ),
    Case(
        "arn-neither-an-iam-user-nor-a-role",
        {
            "a.yaml": table(
                "partitions: []\napprovers: [lrcxpnu, 'arn:aws:lambda:us-east-1:123456789012:function:f']",
                name="a",
            )
        },
        [
            "defs/a.yaml:4:22: 'approvers[1]' 'arn:aws:lambda:us-east-1:123456789012:function:f' is not "
            "valid: an ARN here must be an IAM user ARN (arn:aws:iam::ACCOUNT:user/NAME) or an IAM role ARN "
            "(arn:aws:iam::ACCOUNT:role/NAME); for a Glue job, a Lambda or another service, list the ARN of "
            "the role it runs as instead"
        ],
    ),
    Case(
        "duplicate-producers",
        {"a.yaml": table("partitions: []\nproducers: [etl, etl]", name="a")},
        ["defs/a.yaml:4:12: 'producers' lists the same value more than once"],
    ),
    Case(
        "no-concurrent-run-at-all",
        {"a.yaml": table("partitions: []\nmax_concurrent_runs: 0", name="a")},
        ["defs/a.yaml:4:22: 'max_concurrent_runs' must be at least 1, got 0"],
    ),
    Case(
        "retries-without-backoff",
        {"a.yaml": table("partitions: []\nretries: {max_attempts: 3}", name="a")},
        ["defs/a.yaml:4:10: missing required field 'backoff_seconds' in 'retries'"],
    ),
    Case(
        "task-timeout-of-zero",
        {
            "a.yaml": table(
                "partitions: []\ntasks:\n  - {alias: t, type: glue, target: job, timeout_seconds: 0}",
                name="a",
            )
        },
        ["defs/a.yaml:5:58: 'tasks[0].timeout_seconds' must be at least 1, got 0"],
    ),
    Case(
        "duplicate-table-name",
        {"up.yaml": UPSTREAM, "z/again.yaml": UPSTREAM},
        ["defs/z/again.yaml:2:7: duplicate table name 'up' (first defined at defs/up.yaml:2:7)"],
    ),
    Case(
        "unknown-dependency",
        {"up.yaml": UPSTREAM, "a.yaml": table("partitions: []\ndependencies:\n  - {dependency_name: upp}")},
        ["defs/a.yaml:5:23: unknown dependency 'upp' (did you mean 'up'?)"],
    ),
    Case(
        "self-dependency",
        {"a.yaml": table("partitions: []\ndependencies:\n  - {dependency_name: down}")},
        ["defs/a.yaml:5:23: table 'down' depends on itself"],
    ),
    Case(
        "cycle-of-three",
        {
            "a.yaml": table("partitions: []\ndependencies: [{dependency_name: b}]", name="a"),
            "b.yaml": table("partitions: []\ndependencies: [{dependency_name: c}]", name="b"),
            "c.yaml": table("partitions: []\ndependencies: [{dependency_name: a}]", name="c"),
        },
        ["defs/a.yaml:4:34: dependency cycle: a -> b -> c -> a"],
    ),
    # --- any_of groups and the new task targets (issue 20) ------------------------------------------
    Case(
        "any_of-unknown-member",
        {"up.yaml": UPSTREAM, "a.yaml": table("partitions: []\ndependencies:\n  - any_of: [up, upp]")},
        ["defs/a.yaml:5:18: unknown dependency 'upp' (did you mean 'up'?)"],
    ),
    Case(
        "any_of-member-repeated",
        {"up.yaml": UPSTREAM, "a.yaml": table("partitions: []\ndependencies:\n  - any_of: [up, up]")},
        ["defs/a.yaml:5:18: 'up' is named twice among the any_of members of table 'down'"],
    ),
    Case(
        "any_of-member-also-plain",
        {
            "up.yaml": UPSTREAM,
            "b.yaml": table("partitions: []", name="b"),
            "a.yaml": table("partitions: []\ndependencies:\n  - {dependency_name: up}\n  - any_of: [b, up]"),
        },
        [
            "defs/a.yaml:6:17: 'up' is both a dependency and an any_of member of table 'down': name it once "
            "(an upstream is either required on its own or one of the alternatives)"
        ],
    ),
    Case(
        "any_of-one-member",
        {"up.yaml": UPSTREAM, "a.yaml": table("partitions: []\ndependencies:\n  - any_of: [up]")},
        ["defs/a.yaml:5:13: 'dependencies[0].any_of' must have at least 2 items"],
    ),
    Case(
        "any_of-cycle-through-a-member",
        {
            "a.yaml": table("partitions: []\ndependencies: [{dependency_name: b}]", name="a"),
            "b.yaml": table("partitions: []\ndependencies: [{any_of: [c, {dependency_name: a}]}]", name="b"),
            "c.yaml": table("partitions: []", name="c"),
        },
        ["defs/a.yaml:4:34: dependency cycle: a -> b -> a"],
    ),
    Case(
        "any_of-member-lacks-a-required-partition",
        {
            "up.yaml": UPSTREAM,
            "flat.yaml": table("partitions: []", name="flat"),
            "a.yaml": table(
                "partitions:\n  - {name: dt, type: date}\ndependencies:\n  - any_of: [up, flat]", name="a"
            ),
        },
        [
            "defs/a.yaml:4:12: required partition 'dt' is provided by no dependency (any_of(up, flat)); "
            "any_of(up, flat): 'flat' lacks it, and a group provides a partition only if every member does; "
            "add it upstream, map it with partition_map, or set is_required: false"
        ],
    ),
    Case(
        "any_of-member-partition-map",
        {
            "up.yaml": UPSTREAM,
            "b.yaml": table("partitions: []", name="b"),
            "a.yaml": table(
                "partitions: []\ndependencies:\n  - any_of: [b, {dependency_name: up, partition_map: {dt: day}}]",
                name="a",
            ),
        },
        [
            "defs/a.yaml:5:55: partition_map names unknown partition 'dt' of 'a' (it has: no partitions)",
            "defs/a.yaml:5:59: partition_map maps 'dt' to 'day', which 'up' does not have (it has: dt)",
        ],
    ),
    Case(
        "http-task-not-https",
        {
            "a.yaml": table(
                "partitions: []\ntasks:\n  - {alias: hook, type: http, target: 'http://example.com/x'}",
                name="a",
            )
        },
        [
            "defs/a.yaml:5:39: http task 'hook' must use https:// (plain http:// only for a local host: "
            "127.0.0.1, ::1, localhost), not 'http://example.com/x'"
        ],
    ),
    Case(
        "auth-secret-on-a-glue-task",
        {
            "a.yaml": table(
                "partitions: []\ntasks:\n  - {alias: j, type: glue, target: job, auth_secret: s}", name="a"
            )
        },
        ["defs/a.yaml:5:22: 'tasks[0].type' must be 'http', got 'glue'"],
    ),
    Case(
        "duplicate-partition",
        {"a.yaml": table("partitions:\n  - {name: dt, type: date}\n  - {name: dt, type: int}", name="a")},
        ["defs/a.yaml:5:12: duplicate partition 'dt' in table 'a'"],
    ),
    Case(
        "duplicate-task-alias",
        {
            "a.yaml": table(
                "partitions: []\ntasks:\n  - {alias: t, type: glue, target: j1}\n"
                "  - {alias: t, type: glue, target: j2}",
                name="a",
            )
        },
        ["defs/a.yaml:6:13: duplicate task alias 't' in table 'a'"],
    ),
    Case(
        "duplicate-dependency",
        {
            "up.yaml": UPSTREAM,
            "a.yaml": table(
                "partitions: [{name: dt, type: date}]\ndependencies:\n"
                "  - {dependency_name: up}\n  - {dependency_name: up, is_required: false}"
            ),
        },
        ["defs/a.yaml:6:23: duplicate dependency 'up' in table 'down'"],
    ),
    Case(
        "partition-map-unknown-downstream",
        {
            "up.yaml": UPSTREAM,
            "a.yaml": table(
                "partitions: [{name: dt, type: date}]\ndependencies:\n"
                "  - {dependency_name: up, partition_map: {day: dt}}"
            ),
        },
        ["defs/a.yaml:5:43: partition_map names unknown partition 'day' of 'down' (it has: dt)"],
    ),
    Case(
        "partition-map-unknown-upstream",
        {
            "up.yaml": UPSTREAM,
            "a.yaml": table(
                "partitions: [{name: day, type: date}]\ndependencies:\n"
                "  - {dependency_name: up, partition_map: {day: date}}"
            ),
        },
        [
            "defs/a.yaml:5:48: partition_map maps 'day' to 'date', which 'up' does not have (it has: dt)",
            "defs/a.yaml:3:21: required partition 'day' is provided by no dependency ('up'); "
            "add it upstream, map it with partition_map, or set is_required: false",
        ],
    ),
    Case(
        "required-partition-not-provided",
        {
            "up.yaml": UPSTREAM,
            "a.yaml": table(
                "partitions:\n  - {name: dt, type: date}\n  - {name: region, type: string}\n"
                "dependencies: [{dependency_name: up}]"
            ),
        },
        [
            "defs/a.yaml:5:12: required partition 'region' is provided by no dependency ('up'); "
            "add it upstream, map it with partition_map, or set is_required: false"
        ],
    ),
    Case(
        "partition-type-mismatch",
        {
            "up.yaml": UPSTREAM,
            "a.yaml": table("partitions: [{name: dt, type: int}]\ndependencies: [{dependency_name: up}]"),
        },
        [
            "defs/a.yaml:4:34: partition 'dt' is int here but 'dt' of 'up' is date: "
            "their values can never match"
        ],
    ),
    Case(
        "template-syntax",
        {
            "a.yaml": table(
                "partitions: [{name: dt, type: date}]\ntasks:\n"
                "  - {alias: t, type: glue, target: j, params: {--dt: '{{ partitions.dt '}}",
                name="a",
            )
        },
        [
            "defs/a.yaml:5:54: template does not parse: unexpected end of template, "
            "expected 'end of print statement'. (template line 1)"
        ],
    ),
    Case(
        "template-unknown-partition",
        {
            "a.yaml": table(
                "partitions: [{name: dt, type: date}]\ntasks:\n"
                "  - {alias: t, type: glue, target: j, params: {--dt: '{{ partitions.day }}'}}",
                name="a",
            )
        },
        ["defs/a.yaml:5:54: template names unknown partition 'day' (table has: dt)"],
    ),
    Case(
        "template-unknown-variable",
        {
            "a.yaml": table(
                "partitions: [{name: dt, type: date}]\ntasks:\n"
                "  - {alias: t, type: lambda, target: fn, params: {x: {y: ['{{ env.HOME }}']}}}",
                name="a",
            )
        },
        [
            "defs/a.yaml:5:59: template uses unknown variable 'env' "
            "(available: partitions, table, run, triggers)"
        ],
    ),
    Case(
        "template-sandbox-escape",
        {
            "a.yaml": table(
                "partitions: []\ntasks:\n"
                '  - {alias: t, type: lambda, target: fn, params: {x: "{{ table.__class__.__mro__ }}"}}',
                name="a",
            )
        },
        [
            "defs/a.yaml:5:54: template accesses '__class__': private attributes are not allowed",
            "defs/a.yaml:5:54: template accesses '__mro__': private attributes are not allowed",
        ],
    ),
    Case(
        "problems-in-the-second-document",
        {"a.yaml": UPSTREAM + "---\nversion: 1\nname: b\npartitions: []\nowner: 7\n"},
        ["defs/a.yaml:9:8: 'owner' must be a string, got number 7"],
    ),
    Case(
        "syntax-error-skips-cross-table-checks",
        {
            "a.yaml": "version: 1\nname: a\npartitions: [\n",
            "b.yaml": table("partitions: []\ndependencies: [{dependency_name: a}]", name="b"),
        },
        ["defs/a.yaml:4:1: invalid YAML: did not find expected node content (while parsing a flow node)"],
    ),
    Case(
        "reference-to-a-broken-table-is-not-unknown",
        {
            "a.yaml": "version: 1\nname: a\npartitions: []\nowner: [x]\n",
            "b.yaml": table("partitions: []\ndependencies: [{dependency_name: a}]", name="b"),
        },
        ["defs/a.yaml:4:8: 'owner' must be a string, got a list"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_invalid_definitions_report_exact_problems(case: Case, write_defs: WriteDefs) -> None:
    root = write_defs(case.files)
    result = validate_directory(root, max_file_bytes=case.max_bytes)
    assert [str(p) for p in result.problems] == sorted(case.expected, key=_sort_key)
    assert not result.valid


def test_catalogue_covers_at_least_25_distinct_checks() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


def test_alias_bomb_is_rejected_without_expanding(write_defs: WriteDefs) -> None:
    """Nine levels of nine aliases would expand to 387 million values; the check stays small."""
    import tracemalloc

    root = write_defs({"a.yaml": ALIAS_BOMB})
    tracemalloc.start()
    validate_directory(root)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 5 * 1024 * 1024


def _sort_key(line: str) -> tuple[str, int, int, str]:
    path, line_no, column, message = line.split(":", 3)
    return path, int(line_no), int(column), message


def test_problems_are_sorted_by_file_line_column(write_defs: WriteDefs) -> None:
    root = write_defs(
        {
            "b.yaml": table("partitions: []\nowner: 1\ndebounce_seconds: x", name="b"),
            "a.yaml": table("partitions: []\nowner: 1", name="a"),
        }
    )
    lines = [str(p) for p in validate_directory(Path(root)).problems]
    assert lines == [
        "defs/a.yaml:4:8: 'owner' must be a string, got number 1",
        "defs/b.yaml:4:8: 'owner' must be a string, got number 1",
        "defs/b.yaml:5:19: 'debounce_seconds' must be an integer, got string 'x'",
    ]


def test_each_missing_field_is_reported_once(write_defs: WriteDefs) -> None:
    root = write_defs({"a.yaml": "version: 1\n"})
    assert [str(p) for p in validate_directory(root).problems] == [
        "defs/a.yaml:1:1: missing required field 'name'",
        "defs/a.yaml:1:1: missing required field 'partitions'",
    ]
