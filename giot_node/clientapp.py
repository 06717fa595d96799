"""``python -m giot_node.clientapp``: the node's stand-in for Flower's ``flwr-clientapp``.

The SuperExec starts one such process per task with ``flwr-clientapp``'s arguments (the node puts
this module first on ``PATH`` under that name, ``giot_node.supernode``). It follows
``flwr.supernode.runtime.run_clientapp`` step for step (the Runtime API client and its
interceptors, heartbeat, ``pull_task_input``, ``push_message``, ``push_task_output``) with one
difference: the FAB is never installed and its ClientApp never loaded. Instead:

- a run of an app (``run.fab_id``, ``PUBLISHER/NAME``) that the node was not told to trust gets a
  Flower Error reply ``untrusted_app: <fab_id>``; nothing of the app runs;
- a train/evaluate message becomes a ``node_protocol`` ``task`` frame (config scalars, the
  ``"arrays"`` record as numpy), posted to the node's bridge, which hands it to Home Assistant;
- the ``result`` comes back as ``{"arrays", "metrics"}`` (status ok) or as
  ``{"metrics": {"num-examples": 0, "skipped": 1}}`` (skipped / refused, reason logged), which
  the server's validation drops as one node's miss, and the round goes on.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from logging import DEBUG, ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import SUPERNODE_DEFAULT_CLIENT_ADDRESS
from flwr.supercore.exit import ExitCode, flwr_exit, register_signal_handlers
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.runtime.tracing import RuntimeTracingInterceptor
from flwr.supercore.telemetry import EventType, event
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from giot_engine import node_protocol as proto
from giot_node.supernode import NODE_CONFIG_BRIDGE, NODE_CONFIG_DEADLINE, NODE_CONFIG_TRUSTED

KINDS = {"train": "train", "evaluate": "evaluate"}  # Flower message type (before any ".") -> kind
BRIDGE_MARGIN_S = 30.0  # the node answers "deadline" itself; this only guards a hung bridge


@dataclass(frozen=True)
class Settings:
    """What the node passed in ``--node-config``."""

    bridge: Path
    trusted: frozenset[str]
    deadline_s: float

    @classmethod
    def from_node_config(cls, config: Mapping[str, Any]) -> Settings:
        bridge = config.get(NODE_CONFIG_BRIDGE)
        if not isinstance(bridge, str) or not bridge:
            raise RuntimeError(f"node config {NODE_CONFIG_BRIDGE} missing: not run by giot-node?")
        trusted = str(config.get(NODE_CONFIG_TRUSTED, ""))
        deadline = config.get(NODE_CONFIG_DEADLINE, 300.0)
        return cls(
            Path(bridge),
            frozenset(t.strip() for t in trusted.split(",") if t.strip()),
            float(deadline) if isinstance(deadline, (int, float)) else 300.0,
        )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def config_scalars(record: Mapping[str, Any]) -> tuple[dict[str, proto.ConfigValue], list[str]]:
    """Return the ConfigRecord's scalars as the task frame carries them, and the keys dropped."""
    out: dict[str, proto.ConfigValue] = {}
    dropped: list[str] = []
    for key, value in record.items():
        if isinstance(value, bool | str) or _number(value) is not None:
            out[key] = value
        else:  # lists, bytes, non-finite numbers: nothing a hub's round reads
            dropped.append(key)
    return out, dropped


def task_frame(message: Message, kind: str, default_deadline_s: float) -> tuple[bytes, float]:
    """Encode ``message`` as a ``task`` frame; return it and its deadline."""
    content = message.content
    if "shared" in content.array_records:
        raise proto.ProtocolError("bad_schema", "GSFS shared (SecAgg) mode is not served to hubs")
    config, dropped = config_scalars(content.config_records.get("config", {}))
    if dropped:
        log(WARNING, "[giot-node] config keys not passed to the hub: %s", sorted(dropped))
    arrays = {k: a.numpy() for k, a in content.array_records.get("arrays", {}).items()}
    rnd = config.get("server-round")
    if not (isinstance(rnd, int) and not isinstance(rnd, bool)):
        group = message.metadata.group_id
        rnd = int(group) if group.isdigit() else 0
    deadline = _number(config.get("deadline-s"))
    deadline_s = deadline if deadline is not None and deadline > 0 else default_deadline_s
    body = {
        "task_id": message.metadata.message_id,
        "kind": kind,
        "run_id": int(message.metadata.run_id),
        "round": rnd,
        "deadline_s": deadline_s,
        "config": config,
    }
    return proto.encode("task", body, arrays), deadline_s


def ask_bridge(bridge: Path, frame: bytes, task_id: str, timeout_s: float) -> proto.Frame:
    """POST the task to the node; its result frame (checked: a result for this task)."""
    transport = httpx.HTTPTransport(uds=str(bridge))
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    with httpx.Client(transport=transport, timeout=timeout) as http:
        response = http.post(
            "http://giot-node/task",
            content=frame,
            headers={"content-type": "application/octet-stream"},
        )
    answer = proto.decode(response.content)
    if answer.kind == "error":
        raise proto.ProtocolError(answer.body["reason"] or "failed", answer.body["detail"])
    if answer.kind != "result" or answer.body["task_id"] != task_id:
        raise proto.ProtocolError("bad_schema", f"{answer.kind} is not the result of {task_id}")
    return answer


def skipped_reply(message: Message, reason: str, detail: str = "") -> Message:
    """Build a reply the server counts as this node's miss (no arrays, zero examples)."""
    log(WARNING, "[giot-node] task %s skipped: %s %s", message.metadata.message_id, reason, detail)
    content = RecordDict({"metrics": MetricRecord({"num-examples": 0, "skipped": 1})})
    return Message(content, reply_to=message)


def answer(message: Message, context: Context, run: Run) -> Message:
    """Build the node's reply to one message of ``run`` (see module docstring)."""
    settings = Settings.from_node_config(context.node_config)
    if run.fab_id not in settings.trusted:
        reason = f"untrusted_app: {run.fab_id}"
        trusted = sorted(settings.trusted)
        log(ERROR, "[giot-node] refused run %d: %s (trusted: %s)", run.run_id, reason, trusted)
        return Message(Error(code=ErrorCode.INVALID_FAB, reason=reason), reply_to=message)
    message_type = message.metadata.message_type
    kind = KINDS.get(message_type.split(".", 1)[0])
    if kind is None:
        reason = f"unsupported message type {message_type!r}"
        log(ERROR, "[giot-node] %s", reason)
        return Message(Error(code=ErrorCode.UNKNOWN, reason=reason), reply_to=message)
    task_id = message.metadata.message_id
    try:
        frame, deadline_s = task_frame(message, kind, settings.deadline_s)
        result = ask_bridge(settings.bridge, frame, task_id, deadline_s + BRIDGE_MARGIN_S)
    except proto.ProtocolError as err:
        return skipped_reply(message, err.reason, err.detail)
    except httpx.HTTPError as err:
        return skipped_reply(message, "failed", f"bridge: {err}")
    status, reason = result.body["status"], result.body["reason"]
    if status != "ok":
        return skipped_reply(message, reason or status, f"(hub said {status})")
    records: dict[str, Any] = {}
    if kind == "train" or result.arrays:
        records["arrays"] = ArrayRecord({k: Array(np.asarray(v)) for k, v in result.arrays.items()})
    records["metrics"] = MetricRecord(dict(result.body["metrics"]))
    log(INFO, "[giot-node] %s task %s answered by the hub", kind, task_id)
    return Message(RecordDict(records), reply_to=message)


def run_clientapp(
    runtime_api_address: str,
    token: str,
    insecure: bool,
    certificates: bytes | None = None,
    parent_pid: int | None = None,
) -> None:
    """``flwr.supernode.runtime.run_clientapp`` without the FAB: ``answer`` replies instead."""
    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    event(EventType.FLWR_CLIENTAPP_RUN_ENTER)
    retry_invoker = make_simple_http_retry_invoker()
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeTracingInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=retry_invoker,
    )
    heartbeat: HeartbeatSender | None = None
    message: Message | None = None
    reply: Message | None = None
    context: Context | None = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    exit_code = ExitCode.SUCCESS

    def on_exit() -> None:
        retry_invoker.max_tries = 1  # do not block the exit on retries
        push_task_output(client=client, context=context, sub_status=sub_status, details=details)
        if heartbeat is not None and heartbeat.is_running:
            heartbeat.stop()
        client.close()

    register_signal_handlers(
        event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE,
        exit_message="Task stopped.",
        exit_handlers=[on_exit],
    )
    try:
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message, context, run, _fab = pull_task_input(client)  # the FAB is not installed
        reply = answer(message, context, run)
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as ex:
        reason = f"{type(ex)}:<'{ex}'>"
        log(ERROR, "[giot-node] ClientApp raised an exception", exc_info=ex)
        sub_status, details = SubStatus.FAILED, reason
        if message is not None:
            reply = Message(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                reply_to=message,
            )
        exit_code = ExitCode.TASK_PROC_EXCEPTION
    finally:
        if reply is not None and context is not None:
            try:
                push_message(client, reply, context)
            except Exception as ex:
                log(ERROR, "Failed to push reply message", exc_info=ex)
                exit_code = ExitCode.CLIENTAPP_COMMUNICATION_ERROR
    flwr_exit(code=exit_code, event_type=EventType.FLWR_CLIENTAPP_RUN_LEAVE)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``flwr-clientapp``'s arguments and run one task."""
    parser = argparse.ArgumentParser(description="GIoT node ClientApp (replaces flwr-clientapp)")
    parser.add_argument(
        "--runtime-api-address",
        dest="runtime_api_address",
        default=SUPERNODE_DEFAULT_CLIENT_ADDRESS,
    )
    add_args_flwr_app_common(parser=parser)
    args = parser.parse_args(argv)
    token = try_obtain_flwr_app_token(args)
    log(DEBUG, "[giot-node] ClientApp for the Runtime API at %s", args.runtime_api_address)
    run_clientapp(
        runtime_api_address=args.runtime_api_address,
        token=token,
        insecure=args.insecure,
        certificates=validate_and_resolve_root_certificates(args.root_certificates, args.insecure),
        parent_pid=args.parent_pid,
    )


if __name__ == "__main__":
    main()
