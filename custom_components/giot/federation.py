"""The hub's side of a federated round: a node's task in, the detector's answer out.

The node link (``node_link``) receives each task and sends the result; here a task becomes a
detector call (in the executor, through the ``DetectorRunner``) on the hub's own training
windows, and the answer becomes a ``result`` frame's body and arrays. Raw windows never leave:
only what the detector returns (a GSFS-encoded update for ``train``, metrics for
``evaluate``) does.

``train`` merges the round's downlink into the local model, trains on the windows and encodes
the update; ``evaluate`` loads the published global model (the hub scores with it from then
on; per-device calibration stays) and measures it on the windows. Local training and a
federated task never run together: both hold the training lock, and a task that finds it
taken is answered ``skipped busy`` rather than waiting past its deadline.

Once the hub knows the server's key (learnt from the node at pairing), a global model is loaded
only with the server's signature: an ``evaluate`` task whose model is unsigned or whose
signature does not verify (``artifact.model_message`` of its version, round and tensors) is
refused ``invalid_model`` before the detector sees it, the repair is raised, and the hub keeps
the model it has. Train tasks are not checked: their downlink never scores, it only starts the
hub's own round.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from homeassistant.core import callback
from homeassistant.util import dt as dt_util

from giot_engine import node_protocol
from giot_engine.artifact import arrays_digest, model_message
from giot_engine.detector_process import DetectorError
from giot_engine.federated import TaskAnswer

from .const import LOGGER, FederationStatus
from .detector_runner import DetectorRunner
from .issues import HealthIssues
from .models import HubState
from .training import LocalTraining

# What a paused hub (the switch, or federation off in the options) answers.
PAUSED_REASON = "paused"
# Refusals that say the federation's model does not fit this hub: a repair, not just a log.
MODEL_REFUSALS = frozenset({"incompatible_model", "invalid_model"})


@dataclass(frozen=True, slots=True)
class TaskResult:
    """A ``result`` frame to send: its body and its arrays."""

    body: dict[str, Any]
    arrays: dict[str, np.ndarray]


def skipped(task_id: str, reason: str) -> TaskResult:
    """Answer a task without doing it (paused, busy, past its deadline, ...)."""
    return TaskResult(
        {"task_id": task_id, "status": "skipped", "reason": reason, "metrics": {}}, {}
    )


def signature_problem(key: str, body: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """Say why a task's global model is not signed by the server's ``key`` ("" when it is)."""
    config = body["config"]
    version, signature = config.get("model-version"), config.get("model-signature")
    if not isinstance(version, str) or not isinstance(signature, str):
        return "unsigned"
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
        message = model_message(version, int(body["round"]), arrays_digest(arrays))
        public.verify(bytes.fromhex(signature), message)
    except ValueError:
        return "unreadable signature or key"
    except InvalidSignature:
        return "not signed by the server's key"
    return ""


def task_seed(run_id: int, server_round: int) -> int:
    """Seed a round's local training: the same task trains the same way if repeated."""
    return (run_id * 1_000_003 + server_round) % 2**31


class Federation:
    """Runs a node's tasks on this hub and keeps the hub's federation state."""

    def __init__(
        self,
        *,
        runner: DetectorRunner,
        training: LocalTraining,
        hub: HubState,
        issues: HealthIssues,
        allowed: Callable[[], bool],
        changed: Callable[[], None],
        save: Callable[[], None],
        server_key: Callable[[], str] = lambda: "",
    ) -> None:
        """Work through ``runner`` on ``training``'s windows; ``allowed`` says not paused/off.

        ``changed`` tells the hub entities, ``save`` schedules saving the hub state,
        ``server_key`` gives the server's model-signing key learnt at pairing ("" for none).
        """
        self._runner = runner
        self._training = training
        self._hub = hub
        self._issues = issues
        self._allowed = allowed
        self._changed = changed
        self._save = save
        self._server_key = server_key
        self._round: tuple[int, int] | None = None

    async def async_run(self, task: node_protocol.Frame) -> TaskResult:
        """Do one task and turn the detector's answer into a result (it never raises).

        The model version and origin the detector reports are applied even when the link
        gives up waiting (the detector scores with that model whether or not the node heard).
        """
        body = task.body
        task_id: str = body["task_id"]
        if not self._allowed():
            return skipped(task_id, PAUSED_REASON)
        if self._training.lock.locked():
            return skipped(task_id, "busy")
        async with self._training.lock:
            self._hub.federation_training = True
            self._changed()
            try:
                answer = await self._async_answer(body, task.arrays)
            finally:
                self._hub.federation_training = False
                self._changed()
        self._apply(answer)
        return TaskResult(
            {
                "task_id": task_id,
                "status": answer.status,
                "reason": answer.reason,
                "metrics": {name: float(value) for name, value in answer.metrics.items()},
            },
            dict(answer.arrays),
        )

    async def _async_answer(
        self, body: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
    ) -> TaskAnswer:
        detector = self._runner.detector
        # the detector reads the run and the round from the config, as the simulation's does
        config = {**body["config"], "run-id": body["run_id"], "server-round": body["round"]}
        try:
            if body["kind"] == "evaluate" and (key := self._server_key()):
                why = await self._runner.async_run(signature_problem, key, body, arrays)
                if why:
                    LOGGER.warning(
                        "GIoT refuses the federation's model %s of round %s: %s",
                        config.get("model-version", "(unnamed)"),
                        body["round"],
                        why,
                    )
                    return TaskAnswer("refused", "invalid_model")
            windows = await self._training.async_training_windows()
            if body["kind"] == "train":
                if not len(windows):
                    return TaskAnswer("skipped", "no_data")
                seed = task_seed(body["run_id"], body["round"])
                return await self._runner.async_run(
                    detector.federated_train, config, arrays, windows, seed
                )
            return await self._runner.async_run(
                detector.federated_evaluate, config, arrays, windows
            )
        except (DetectorError, OSError) as err:
            LOGGER.warning("GIoT could not answer the node's %s task: %s", body["kind"], err)
        except Exception:
            # A task comes from outside: whatever it breaks, the node gets an answer.
            LOGGER.exception("GIoT failed on the node's %s task", body["kind"])
        return TaskAnswer("skipped", "failed")

    @callback
    def _apply(self, answer: TaskAnswer) -> None:
        """Take the answer's model and what it says about the federation's model.

        A model that fits clears the repair: a round answered ``ok``, or a global model the
        detector took without measuring it (a new hub, no windows yet: ``skipped no_data``).
        """
        taken = answer.model_version not in {None, self._hub.model_version}
        if answer.model_version is not None:
            self._hub.model_version = answer.model_version
        if answer.origin is not None:
            self._hub.model_origin = answer.origin
        if answer.status == "refused" and answer.reason in MODEL_REFUSALS:
            LOGGER.warning("GIoT refused the federation's model: %s", answer.reason)
            self._issues.async_node_incompatible("model", answer.reason)
            self._hub.federation_status = FederationStatus.INCOMPATIBLE
        elif answer.status == "ok" or taken:
            self._issues.async_node_incompatible("model", None)
            if self._hub.federation_status is FederationStatus.INCOMPATIBLE:
                self._hub.federation_status = FederationStatus.CONNECTED
        self._changed()
        self._save()

    @callback
    def async_count(
        self, body: Mapping[str, Any], *, received: int = 0, sent: int = 0, status: str = ""
    ) -> None:
        """Count a task's frame (``received``) or its result's (``sent``, with its status).

        These are the last round's counts (the totals count every frame as it passes). A task
        of a new (run, round) starts them afresh; a result ``ok`` is a participation in it.
        """
        key = (int(body["run_id"]), int(body["round"]))
        hub = self._hub
        if key != self._round or hub.bytes_up is None or hub.bytes_down is None:
            self._round = key
            hub.bytes_up = hub.bytes_down = 0
        hub.bytes_down += received
        hub.bytes_up += sent
        if status == "ok":
            hub.federation_round = key[1]
            hub.last_participation = dt_util.utcnow()
        self._changed()
        if sent:
            self._save()

    @callback
    def async_count_link(self, received: int, sent: int) -> None:
        """Count every frame over the link (handshake, status and errors too) in the totals."""
        self._hub.bytes_down_total += received
        self._hub.bytes_up_total += sent
