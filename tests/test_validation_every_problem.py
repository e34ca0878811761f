"""Every problem at once (issue 13, DESIGN §2): a document whose schema errors are confined to some
fields still takes part in the cross-table and template checks with its other fields; only what the
broken fields feed is skipped."""

from __future__ import annotations

from click.testing import CliRunner

from controller.cli import main
from controller.files.validation import validate_directory
from tests.conftest import WriteDefs

A_ON_A_CYCLE = """
    version: 1
    name: a
    debounce_secods: 60
    partitions:
      - {name: dt, type: date}
    dependencies:
      - {dependency_name: b}
"""
B_ON_A_CYCLE = """
    version: 1
    name: b
    partitions:
      - {name: dt, type: date}
    dependencies:
      - {dependency_name: a}
"""


def problems(write_defs: WriteDefs, **files: str) -> list[str]:
    return [str(p) for p in validate_directory(write_defs(**files)).problems]


def test_a_typo_does_not_hide_a_cycle(write_defs: WriteDefs) -> None:
    """The typo hid the cycle until it was fixed: both come in one run."""
    assert problems(write_defs, **{"a.yaml": A_ON_A_CYCLE, "b.yaml": B_ON_A_CYCLE}) == [
        "defs/a.yaml:3:1: unknown field 'debounce_secods' (did you mean 'debounce_seconds'?)",
        "defs/a.yaml:7:23: dependency cycle: a -> b -> a",
    ]


def test_the_cli_reports_both_in_one_run(write_defs: WriteDefs) -> None:
    write_defs(**{"a.yaml": A_ON_A_CYCLE, "b.yaml": B_ON_A_CYCLE})
    result = CliRunner().invoke(main, ["validate", "defs"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "defs/a.yaml:3:1: unknown field 'debounce_secods' (did you mean 'debounce_seconds'?)",
        "defs/a.yaml:7:23: dependency cycle: a -> b -> a",
        "Invalid: 2 problems in 1 file; nothing was written.",
    ]


def test_a_value_of_the_wrong_type_does_not_hide_a_template_error(write_defs: WriteDefs) -> None:
    table = """
        version: 1
        name: t
        debounce_seconds: soon
        partitions:
          - {name: dt, type: date}
        tasks:
          - {alias: load, type: glue, target: job, params: {"--d": "{{ partitions.dia }}"}}
    """
    assert problems(write_defs, **{"t.yaml": table}) == [
        "defs/t.yaml:3:19: 'debounce_seconds' must be an integer, got string 'soon'",
        "defs/t.yaml:7:60: template names unknown partition 'dia' (table has: dt)",
    ]


def test_a_broken_dependency_item_leaves_the_others_checked(write_defs: WriteDefs) -> None:
    """dependencies[0] has an unknown field: dependencies[1] still closes a cycle and names a ghost
    at its own line; the broken item itself is not guessed at."""
    down = """
        version: 1
        name: down
        partitions:
          - {name: dt, type: date}
          - {name: regiao, type: string}
        dependencies:
          - {dependency_name: ghost, partition_mpa: {regiao: r}}
          - {dependency_name: up}
          - {dependency_name: nowhere}
    """
    up = """
        version: 1
        name: up
        partitions:
          - {name: dt, type: date}
        dependencies:
          - {dependency_name: down}
    """
    assert problems(write_defs, **{"down.yaml": down, "up.yaml": up}) == [
        "defs/down.yaml:7:30: unknown field 'partition_mpa' (did you mean 'partition_map'?)",
        "defs/down.yaml:8:23: dependency cycle: down -> up -> down",
        "defs/down.yaml:9:23: unknown dependency 'nowhere'",
    ]
    # Not reported: 'regiao' provided by no dependency (the broken item may have mapped it), nor
    # 'ghost' (the item it is in is broken).


def test_a_broken_partition_skips_only_what_needs_the_whole_list(write_defs: WriteDefs) -> None:
    up = """
        version: 1
        name: up
        partitions:
          - {name: dt, type: date}
          - {name: regiao, type: texto}
        tasks:
          - {alias: t, type: glue, target: job, params: {"--r": "{{ partitions.regiao }}", "--x": "{{ nope }}"}}
    """
    down = """
        version: 1
        name: down
        partitions:
          - {name: dt, type: date}
          - {name: regiao, type: string}
        dependencies:
          - {dependency_name: up}
    """
    assert problems(write_defs, **{"up.yaml": up, "down.yaml": down}) == [
        "defs/up.yaml:5:26: 'partitions[1].type' must be one of int, string, date; got 'texto'",
        "defs/up.yaml:7:91: template uses unknown variable 'nope' (available: partitions, table, run, triggers)",
    ]
    # Not reported: '{{ partitions.regiao }}' as an unknown partition of up, nor down's 'regiao' as
    # provided by no dependency: up's partitions are not all known.


def test_positions_after_a_dropped_item_are_the_items_own(write_defs: WriteDefs) -> None:
    table = """
        version: 1
        name: t
        partitions:
          - {name: dt, type: date}
        tasks:
          - {alias: a, type: ftp, target: x}
          - {alias: b, type: glue, target: job}
          - {alias: b, type: glue, target: job, params: {"--d": "{{ partitions.dia }}"}}
    """
    assert problems(write_defs, **{"t.yaml": table}) == [
        "defs/t.yaml:6:22: 'tasks[0].type' must be one of glue, step_function, sqs, lambda, eventbridge, http; got 'ftp'",
        "defs/t.yaml:8:13: duplicate task alias 'b' in table 't'",
        "defs/t.yaml:8:57: template names unknown partition 'dia' (table has: dt)",
    ]


def test_a_document_without_a_valid_name_is_left_out_whole(write_defs: WriteDefs) -> None:
    nameless = """
        version: 1
        name: Bad Name
        partitions:
          - {name: dt, type: date}
        tasks:
          - {alias: t, type: glue, target: job, params: {"--d": "{{ partitions.dia }}"}}
    """
    # Its template is not checked: without a name it is no table of the set.
    assert problems(write_defs, **{"bad.yaml": nameless}) == [
        "defs/bad.yaml:2:7: 'name' 'Bad Name' is not valid: lowercase letters, digits and underscores, "
        "starting with a letter, at most 128 characters",
    ]
    assert problems(write_defs, **{"bad.yaml": "- just\n- a list\n"}) == [
        "defs/bad.yaml:1:1: a table definition must be a mapping of fields, got a list",
    ]
