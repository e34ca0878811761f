"""Task parameter templates: what validation accepts and how rendering behaves in the sandbox."""

from __future__ import annotations

import pytest
from jinja2.exceptions import SecurityError, UndefinedError

from controller.core.templates import render, render_params, template_errors

PARTITIONS = {"dt": "date", "regiao": "string"}


@pytest.mark.parametrize(
    "source",
    [
        "plain text, no template",
        "{{ partitions.dt }}",
        "{{ partitions['regiao'] | upper }}",
        "{{ table.name }}-{{ run.id }}",
        "{{ triggers | tojson }}",
        "{% for k, v in partitions.items() %}{{ k }}={{ v }};{% endfor %}",
    ],
)
def test_accepted_templates(source: str) -> None:
    assert template_errors(source, PARTITIONS) == []


def test_all_errors_of_one_template_are_reported() -> None:
    assert template_errors("{{ partitions.day }} {{ env }} {{ run.__dict__ }}", PARTITIONS) == [
        "template uses unknown variable 'env' (available: partitions, table, run, triggers)",
        "template accesses '__dict__': private attributes are not allowed",
        "template names unknown partition 'day' (table has: dt, regiao)",
    ]


def test_render_params_renders_nested_strings_only() -> None:
    params = {"--dt": "{{ partitions.dt }}", "n": 3, "nested": ["{{ table.name }}", True]}
    context = {"partitions": {"dt": "2024-05-01"}, "table": {"name": "t"}}
    assert render_params(params, context) == {"--dt": "2024-05-01", "n": 3, "nested": ["t", True]}


def test_rendering_an_undefined_name_raises_instead_of_printing_nothing() -> None:
    with pytest.raises(UndefinedError):
        render("{{ partitions.missing }}", {"partitions": {}})


def test_sandbox_blocks_escape_attempts_at_render_time() -> None:
    with pytest.raises(SecurityError):
        render("{{ ''.__class__.__mro__[1].__subclasses__() }}", {})
