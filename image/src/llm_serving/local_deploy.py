"""Deploying on the local Ray the way KubeRay does on a cluster: declaratively, from a Serve config.

`serve.run` deploys imperatively, and Ray Serve treats every imperative redeploy as new code that
restarts every replica. A declarative deploy (the path of the Serve REST API, which KubeRay uses)
compares the application's code version (import path and args): when only a deployment's
`user_config` changed, Serve calls `reconfigure` on the running replicas instead. `llm-serving
serve` deploys this way, so reloading a changed `traffic` block changes weights, keys and limits
without restarting an engine, exactly as `helm upgrade` does on a cluster.

Imported only after Ray's environment is set (see cli.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from ray import serve
from ray.serve.schema import (
    ApplicationStatus,
    ApplicationStatusOverview,
    DeploymentStatus,
    ServeDeploySchema,
    ServeInstanceDetails,
)

from llm_serving._ray import serve_controller_client
from llm_serving.serve_config import GATEWAY_DEPLOYMENT

POLL_INTERVAL_S = 0.5


class DeployFailed(RuntimeError):
    """Serve could not deploy the application; the message is Serve's own."""


@dataclass(frozen=True)
class ReplicaChange:
    """Replica ids per deployment before and after a deploy."""

    before: Dict[str, List[str]]
    after: Dict[str, List[str]]

    def kept(self) -> List[str]:
        return sorted(name for name, ids in self.after.items() if ids and self.before.get(name) == ids)

    def replaced(self) -> List[str]:
        return sorted(name for name in self.before.keys() | self.after.keys() if name not in self.kept())


class LocalDeployer:
    """Applies one Serve application to the Serve instance this process started."""

    def __init__(self) -> None:
        self._client = serve_controller_client()
        self._current: Optional[Dict[str, Any]] = None

    def apply(
        self, application: Dict[str, Any], on_status: Optional[Callable[[ApplicationStatusOverview], None]] = None
    ) -> ReplicaChange:
        """Deploy `application` and return once Serve runs it, with the new user_config in force.
        `on_status` sees each status Serve reports meanwhile (see DeploymentProgress)."""
        before = self.replica_ids(application["name"])
        rebuilds = self._current is None or _without_deployments(application) != _without_deployments(self._current)
        self._client.deploy_apps(ServeDeploySchema.model_validate({"applications": [application]}))
        self._current = application
        self._wait_until_applied(application, rebuilds, on_status or (lambda state: None))
        return ReplicaChange(before, self.replica_ids(application["name"]))

    def replica_ids(self, app_name: str) -> Dict[str, List[str]]:
        """The running replicas of each deployment of the application (none before it exists)."""
        application = self._details().applications.get(app_name)
        if application is None:
            return {}
        return {
            name: sorted(r.replica_id for r in deployment.replicas if r.state == "RUNNING")
            for name, deployment in application.deployments.items()
        }

    def _details(self) -> ServeInstanceDetails:
        return ServeInstanceDetails(**self._client.get_serve_details())

    def _wait_until_applied(
        self,
        application: Dict[str, Any],
        rebuilds: bool,
        on_status: Callable[[ApplicationStatusOverview], None],
    ) -> None:
        # Serve answers status from its control loop, so right after deploy_apps it may still show
        # the old application as RUNNING. Two signs that the new one is in force: the gateway
        # deployment's target user_config is the new one (set by the loop together with its
        # status) and, when args changed (a rebuild), the application went through DEPLOYING.
        # Status is cheap to poll; the details (with the user_config) are read only once RUNNING.
        user_config = _gateway_user_config(application)
        went_through_deploying = not rebuilds
        while True:
            state = serve.status().applications.get(application["name"])
            if state is not None:
                on_status(state)
                if state.status == ApplicationStatus.DEPLOY_FAILED:
                    raise DeployFailed(state.message)
                if state.status != ApplicationStatus.RUNNING:
                    went_through_deploying = True
                elif went_through_deploying and self._user_config_in_force(application["name"], user_config):
                    return
            time.sleep(POLL_INTERVAL_S)

    def _user_config_in_force(self, app_name: str, user_config: Optional[Dict[str, Any]]) -> bool:
        """From one snapshot of the details: still RUNNING, with the new user_config as target."""
        application = self._details().applications.get(app_name)
        deployment = application.deployments.get(GATEWAY_DEPLOYMENT) if application else None
        return (
            deployment is not None
            and application.status == ApplicationStatus.RUNNING
            and (user_config is None or (deployment.deployment_config.user_config or {}) == user_config)
        )


def _gateway_user_config(application: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The Gateway's user_config the application sets, or None when it sets none."""
    for deployment in application.get("deployments") or []:
        if deployment.get("name") == GATEWAY_DEPLOYMENT and "user_config" in deployment:
            return deployment["user_config"] or {}
    return None


def _without_deployments(application: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in application.items() if key != "deployments"}


class DeploymentProgress:
    """One line per deployment as it starts and as it becomes ready (with the seconds since
    `started`), and Serve's message in full when one fails: what a person wants to see while the
    models load, instead of Ray's and vLLM's logs."""

    def __init__(
        self, say: Callable[[str], None], error: Callable[[str], None], label: Callable[[str], str], started: float
    ) -> None:
        self._say, self._error, self._label, self._started = say, error, label, started
        self._shown: Dict[str, Any] = {}  # deployment -> (status, message) last shown

    def __call__(self, state: ApplicationStatusOverview) -> None:
        for name, deployment in sorted(state.deployments.items()):
            status = deployment.status
            if status in (DeploymentStatus.UPSCALING, DeploymentStatus.DOWNSCALING):
                status = DeploymentStatus.HEALTHY  # autoscaling: it serves meanwhile
            failed = status in (DeploymentStatus.UNHEALTHY, DeploymentStatus.DEPLOY_FAILED)
            shown = (status, deployment.message if failed else "")
            if self._shown.get(name) == shown:
                continue
            self._shown[name] = shown
            prefix = f"llm-serving: [{time.monotonic() - self._started:4.0f} s] {self._label(name)}"
            if status == DeploymentStatus.HEALTHY:
                self._say(f"{prefix}: ready")
            elif status == DeploymentStatus.UPDATING:
                self._say(f"{prefix}: starting")
            else:  # Serve's message carries the failing replica's traceback
                self._error(f"{prefix}: {status.value.lower()}: {deployment.message}")
