"""Reading the SAM template as the tests need it: CloudFormation's short tags, policy statements."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "template.yaml"
BUILDER = TEMPLATE.parent / "build_lambda_zip.py"
NO_VALUE = {"Ref": "AWS::NoValue"}


class CloudFormationLoader(yaml.SafeLoader):
    """A safe loader that turns CloudFormation's short tags into their long forms (``!Ref x`` → ``{"Ref": x}``)."""


def _intrinsic(loader: CloudFormationLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.load(path.read_text(encoding="utf-8"), Loader=CloudFormationLoader)
    return loaded


def statements(policy_document: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """``(condition, statement)`` for each statement; ``!If [C, S, AWS::NoValue]`` gives ``(C, S)``."""
    found: list[tuple[str | None, dict[str, Any]]] = []
    for entry in policy_document["Statement"]:
        if "Fn::If" in entry:
            condition, when_true, when_false = entry["Fn::If"]
            assert when_false == NO_VALUE, f"statement under {condition} must vanish when it is false"
            found.append((condition, when_true))
        else:
            found.append((None, entry))
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def load_builder() -> ModuleType:
    """``deploy/build_lambda_zip.py`` as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("build_lambda_zip", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module
