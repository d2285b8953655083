"""``popek serve``: an HTTP front-end for a cluster of guest servers (docs/serve.md).

One file per concern: services (the guest services and their ports), config (what runs), cluster (the VMs
and their threads), names (the name service, ``/resolve``), dispatch (policies and failover), replication
(kv), sessions, app (the HTTP routes), server (start, stop, the command).
"""

from popek.vmm.serve.config import ConfigError, ServeConfig, VMSpec, build_config, default_cluster
from popek.vmm.serve.server import BackgroundServer, Server, serve_forever

__all__ = ["BackgroundServer", "ConfigError", "ServeConfig", "Server", "VMSpec", "build_config", "default_cluster",
           "serve_forever"]  # fmt: skip
