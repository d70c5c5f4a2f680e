"""Which client method performs each operation of the API.

The keys are the ``operationId`` of every operation in the server's OpenAPI
document (``GET /v1/openapi.json``); the values are the names of the methods
of :class:`~taskhost.Client` and :class:`~taskhost.AsyncClient` that perform
them. The tests check the table against a live server's document both ways.
"""

from collections.abc import Mapping

OPERATIONS: Mapping[str, str] = {
    # Tasks
    "submit_task": "submit",
    "submit_batch": "submit_batch",
    "get_task": "get",
    "list_tasks": "list_tasks",
    "cancel_task": "cancel",
    "retry_task": "retry",
    "task_history": "history",
    "task_logs": "logs",
    "task_input": "input",
    "events": "events",
    # Flows
    "submit_flow": "submit_flow",
    "get_flow": "get_flow",
    "list_flows": "list_flows",
    "cancel_flow": "cancel_flow",
    # Plugins
    "upload_plugin": "upload_plugin",
    "list_plugins": "list_plugins",
    "get_plugin": "get_plugin",
    "set_latest_version": "set_latest_version",
    "set_manifest": "set_manifest",
    "delete_plugin_version": "delete_plugin_version",
    # Models
    "list_models": "list_models",
    "get_model": "get_model",
    "put_model": "put_model",
    "delete_model": "delete_model",
    # Queues, tokens, tenants
    "list_queues": "list_queues",
    "set_queue": "set_queue",
    "create_token": "create_token",
    "list_tokens": "list_tokens",
    "revoke_token": "revoke_token",
    "list_tenants": "list_tenants",
    "get_tenant": "get_tenant",
    "put_tenant": "put_tenant",
    # Operations
    "get_config": "get_config",
    "audit_log": "audit_log",
    "callback_secret": "callback_secret",
    "recent_stats": "recent_stats",
    "list_hosts": "list_hosts",
    "health": "health",
    "metrics": "metrics",
    "openapi": "openapi",
    "reference": "reference",
}
