"""The client against the server's OpenAPI document: every operation has its
method, and every option an operation takes is an argument of it."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from taskhost import ERROR_CODES, FAILURE_CLASSES, OPERATIONS, AsyncClient, Client, TaskSpec

# Options that are arguments of another name.
RENAMED: dict[tuple[str, str], str] = {
    ("events", "Last-Event-ID"): "after",  # the query parameter of the same meaning
}

# Options every request takes, set once on the client: the header's name and
# the argument of the client's constructor that sets it.
CLIENT_WIDE: dict[str, str] = {"Taskhost-Tenant": "tenant"}

# Options that are methods of their own.
OWN_METHOD: dict[tuple[str, str], str] = {
    ("task_logs", "follow"): "follow_logs",  # logs(...) reads, follow_logs(...) streams
}

# Bodies sent as a whole rather than field by field.
WHOLE_BODIES = {"submit_task", "submit_batch", "upload_plugin", "set_manifest"}


@pytest.fixture(scope="module")
def document(client: Client) -> dict[str, Any]:
    return client.openapi()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for methods in document["paths"].values():
        for method, operation in methods.items():
            if method in ("get", "put", "post", "delete", "patch"):
                yield operation["operationId"], operation


def test_every_operation_has_a_method_and_no_more(document: dict[str, Any]) -> None:
    ids = {op_id for op_id, _ in operations(document)}

    assert sorted(ids - set(OPERATIONS)) == [], "operations the client cannot reach"
    assert sorted(set(OPERATIONS) - ids) == [], "operations the document does not have"
    for op_id, name in OPERATIONS.items():
        for cls in (Client, AsyncClient):
            assert callable(getattr(cls, name, None)), f"{cls.__name__}.{name} ({op_id})"


def test_every_parameter_and_body_field_is_an_argument(document: dict[str, Any]) -> None:
    for op_id, operation in operations(document):
        method = getattr(Client, OPERATIONS[op_id])
        arguments = set(inspect.signature(method).parameters)
        path_parameters = [p for p in operation.get("parameters", []) if p["in"] == "path"]
        assert len(path_parameters) <= len(arguments) - 1, op_id
        options = {p["name"] for p in operation.get("parameters", []) if p["in"] != "path"}
        if op_id not in WHOLE_BODIES:
            options |= body_fields(document, operation)
        for option in options:
            if option in CLIENT_WIDE:
                for cls in (Client, AsyncClient):
                    assert CLIENT_WIDE[option] in inspect.signature(cls).parameters, f"{cls.__name__}: {option}"
            elif (op_id, option) in OWN_METHOD:
                assert callable(getattr(Client, OWN_METHOD[op_id, option], None)), f"{op_id}: `{option}`"
            else:
                assert RENAMED.get((op_id, option), option) in arguments, f"{op_id}: `{option}` is not an argument"


def test_task_spec_is_the_task_submission(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["TaskSubmission"]
    sent_as = {"input": "input_base64", "json": "input"}

    fields = {sent_as.get(f.name, f.name) for f in dataclasses.fields(TaskSpec)}

    assert fields == set(schema["properties"])
    submit = set(inspect.signature(Client.submit).parameters) - {"self", "traceparent"}
    assert submit == {f.name for f in dataclasses.fields(TaskSpec)}


def test_error_codes_and_failure_classes_are_the_documents(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    assert sorted(ERROR_CODES) == sorted(schemas["ErrorCode"]["enum"])
    assert sorted(FAILURE_CLASSES) == sorted(schemas["FailureClass"]["enum"])


def body_fields(document: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    """The properties of an operation's JSON body (through ``$ref``,
    ``allOf`` and ``oneOf``)."""
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return properties(document, schema) if schema else set()


def properties(document: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return properties(document, document["components"]["schemas"][name])
    found = set(schema.get("properties", {}))
    for part in schema.get("allOf", []) + schema.get("oneOf", []):
        found |= properties(document, part)
    return found
