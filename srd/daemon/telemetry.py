"""What the daemon tells the outside beyond its logs and status file: the per-inbox hooks and, when
configured, the Prometheus listener (docs/design.md §9)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from srd.config import Config
from srd.daemon.fileevents import FileEvents
from srd.daemon.hooks import HookRunner
from srd.errors import ConfigError

if TYPE_CHECKING:
    from srd.daemon.metrics import MetricsServer

# How long the daemon's exit waits for hooks still queued or running before it stops them.
HOOKS_CLOSE_WAIT_S = 5.0


class Telemetry:
    """The hooks and the metrics listener, subscribed to the daemon's `FileEvents`."""

    def __init__(self, hooks: HookRunner, metrics: MetricsServer | None) -> None:
        self.hooks = hooks
        self.metrics = metrics

    @classmethod
    def start(cls, config: Config, events: FileEvents) -> Telemetry:
        """Start the hook threads' runner and, if `config.metrics` is set, bind the metrics listener.

        Raises:
            ConfigError: Metrics are configured but prometheus_client (the ``srd[metrics]`` extra) is missing.
            StartupError: The metrics listener can't be bound.
        """
        hooks = HookRunner()
        metrics = None
        if config.metrics is not None:
            if importlib.util.find_spec("prometheus_client") is None:
                raise ConfigError(["at 'metrics': needs the prometheus_client package: pip install 'srd[metrics]' "
                                   "(or remove the metrics section)"], config.source)
            from srd.daemon.metrics import MetricsServer

            metrics = MetricsServer.start(config.metrics, hooks.results)
            events.subscribe(metrics.observe)
        events.subscribe(hooks)
        return cls(hooks, metrics)

    def publish(self, status: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.publish(status)

    def close(self) -> None:
        """Give the hooks their last seconds, then stop the listener: until it closes, /readyz answers 503
        "stopping", so a prober sees the daemon go rather than a refused connection."""
        self.hooks.close(HOOKS_CLOSE_WAIT_S)
        if self.metrics is not None:
            self.metrics.close()
