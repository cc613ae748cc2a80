"""A one-box cluster: machines made of network namespaces, shaped links (tc htb) and CPU cgroups,
running torchrun across them with the c10d rendezvous (`qtd cluster run`). Needs root; see
``system.unavailable_reason``. Imports no torch: the harness itself stays light."""

from .spec import ClusterSpec, CpuModel, LinkModel
from .system import ClusterError, unavailable_reason

__all__ = ["ClusterSpec", "CpuModel", "LinkModel", "ClusterError", "unavailable_reason"]
