"""Requests and answers checked against PagerDuty's own OpenAPI description of the REST operations the two-way
sync uses (``tests/fixtures/pagerduty/rest-subset.openapi.json``, vendored from ``shared/specs/``).

OpenAPI 3.0 schemas are JSON Schema draft 4/5 plus a few keywords of their own; jsonschema (a test
dependency) validates them once those are translated: ``nullable: true`` becomes a ``"null"`` type, and a
``readOnly`` property is not required in a request (nor a ``writeOnly`` one in an answer), as OpenAPI 3.0.3
§4.7.25 says. Parameters are checked by name (an undeclared query parameter is an error, so a misspelt
``statuses`` without ``[]`` is caught), required headers (``From``, ``Accept``) by presence, and values
against their schemas.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

SPEC_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "pagerduty" / "rest-subset.openapi.json"
SHARED_SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "specs" / "pagerduty-rest-subset.openapi.json"
#: operations the subset lacks, copied from the same upstream file (``GET /users``; see the fixtures' README)
ADDENDA = (SPEC_PATH.with_name("rest-users.openapi.json"),)

#: "Generic error response from the PagerDuty API" (the schema every documented error answer uses)
GENERIC_ERROR = {"$ref": "#/components/responses/Conflict/content/application~1json/schema"}


def _translate(node: Any, mode: str) -> Any:
    """OpenAPI 3.0 schema keywords as JSON Schema: ``nullable`` and read/write-only ``required`` entries."""
    if isinstance(node, list):
        return [_translate(item, mode) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _translate(value, mode) for key, value in node.items()}
    if out.pop("nullable", False) is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    props = out.get("properties")
    if isinstance(props, dict) and isinstance(out.get("required"), list):
        skip = "readOnly" if mode == "request" else "writeOnly"
        out["required"] = [n for n in out["required"] if not (isinstance(props.get(n), dict) and props[n].get(skip))]
        if not out["required"]:
            del out["required"]
    return out


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    pattern: re.Pattern[str]
    spec: dict[str, Any]


class OpenApi:
    """The vendored spec, ready to check one request or answer at a time (each check returns error texts)."""

    def __init__(self, path: Path = SPEC_PATH, addenda: tuple[Path, ...] = ADDENDA) -> None:
        raw = json.loads(path.read_text())
        for extra in addenda:  # more operations of the same upstream file: paths and components added, none replaced
            more = json.loads(extra.read_text())
            for template, item in more["paths"].items():
                assert template not in raw["paths"], f"{extra.name}: {template} is already in {path.name}"
                raw["paths"][template] = item
            for section, entries in more.get("components", {}).items():
                for name, entry in entries.items():
                    assert name not in raw["components"].get(section, {}), f"{extra.name}: {section}.{name} twice"
                    raw["components"].setdefault(section, {})[name] = entry
        self.raw = raw
        self._modes = {mode: _translate(copy.deepcopy(raw), mode) for mode in ("request", "response")}
        self.operations: list[Operation] = []
        for template, item in raw["paths"].items():
            regex = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            for method, op in item.items():
                if method in ("get", "put", "post", "delete", "patch"):
                    self.operations.append(Operation(method.upper(), template, re.compile(regex), op))

    def find(self, method: str, path: str) -> Operation | None:
        for op in self.operations:
            if op.method == method.upper() and op.pattern.match(path):
                return op
        return None

    def _resolve(self, node: dict[str, Any], mode: str) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self._modes[mode]
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def _validate(self, schema: dict[str, Any], value: Any, mode: str) -> list[str]:
        document = {**schema, "components": self._modes[mode]["components"]}
        validator = jsonschema.Draft4Validator(document)
        return [
            f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in validator.iter_errors(value)
        ]

    def parameters(self, op: Operation) -> list[dict[str, Any]]:
        return [self._resolve(p, "request") for p in op.spec.get("parameters", [])]

    def check_request(
        self, method: str, path: str, query: Mapping[str, list[str]], headers: Mapping[str, str], body: Any
    ) -> list[str]:
        """Errors of one request (empty: valid). ``body`` is the parsed JSON, or None when there was none."""
        op = self.find(method, path)
        if op is None:
            return [f"{method} {path} is not an operation of the spec"]
        errors: list[str] = []
        lower = {k.lower(): v for k, v in headers.items()}
        declared_query = set()
        for param in self.parameters(op):
            name, where = param["name"], param["in"]
            if where == "header":
                if param.get("required") and not lower.get(name.lower()):
                    errors.append(f"header {name} is required by {op.spec['operationId']}")
                elif name.lower() in lower and "enum" in param.get("schema", {}):
                    if lower[name.lower()].split(";")[0].strip() not in param["schema"]["enum"]:
                        errors.append(f"header {name}: {lower[name.lower()]!r} not one of {param['schema']['enum']}")
            elif where == "query":
                declared_query.add(name)
                values = query.get(name, [])
                if param.get("required") and not values:
                    errors.append(f"query parameter {name} is required")
                schema = self._resolve(param.get("schema", {}), "request")
                item_schema = schema.get("items", schema) if schema.get("type") == "array" else schema
                for value in values:
                    errors += [
                        f"query {name}={value!r}: {e}"
                        for e in self._validate(item_schema, _coerce(value, item_schema), "request")
                    ]
                if len(values) > 1 and not name.endswith("[]"):
                    errors.append(f"query parameter {name} given {len(values)} times")
        errors += [
            f"query parameter {name!r} is not declared by {op.spec['operationId']}"
            for name in query
            if name not in declared_query
        ]
        request_body = op.spec.get("requestBody")
        if request_body is not None:
            if body is None:
                errors.append(f"{op.spec['operationId']} needs a JSON body")
            else:
                schema = request_body["content"]["application/json"]["schema"]
                errors += [f"body {e}" for e in self._validate(schema, body, "request")]
        elif body is not None:
            errors.append(f"{op.spec['operationId']} takes no body")
        return errors

    def check_response(self, method: str, path: str, status: int, body: Any) -> list[str]:
        """Errors of one answer against the operation's documented responses (an undocumented status is one)."""
        op = self.find(method, path)
        if op is None:
            return [f"{method} {path} is not an operation of the spec"]
        response = op.spec["responses"].get(str(status))
        if response is None and status >= 400:  # PagerDuty's generic error body, for a 400 the operation omits
            response = {"content": {"application/json": {"schema": GENERIC_ERROR}}}
        if response is None:
            return [f"{op.spec['operationId']} does not document HTTP {status}"]
        response = self._resolve(response, "response")
        content = response.get("content", {}).get("application/json")
        if content is None:
            return [] if body is None else [f"{op.spec['operationId']} HTTP {status} has no body in the spec"]
        return [f"answer {e}" for e in self._validate(content["schema"], body, "response")]

    def request_example(self, operation_id: str) -> Any:
        """The request example the spec gives for an operation (to check our reading of the schema)."""
        for op in self.operations:
            if op.spec["operationId"] == operation_id:
                examples = op.spec["requestBody"]["content"]["application/json"]["examples"]
                example = self._resolve(next(iter(examples.values())), "request")
                return example["value"]
        raise KeyError(operation_id)


def _coerce(value: str, schema: dict[str, Any]) -> Any:
    """A query string value as the type its schema declares (``limit=25`` is the integer 25)."""
    kind = schema.get("type")
    if kind == "integer":
        try:
            return int(value)
        except ValueError:
            return value
    if kind == "boolean":
        return {"true": True, "false": False}.get(value, value)
    return value


SPEC = OpenApi()
