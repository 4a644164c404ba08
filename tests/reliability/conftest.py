"""The integration fixtures (nats-server, services, the Kubernetes API simulator), shared with
the fault-injection suite."""

from tests.integration.conftest import nats_client, nats_server, services
from tests.integration.test_watcher import kube

__all__ = ["kube", "nats_client", "nats_server", "services"]
