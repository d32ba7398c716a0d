"""Cluster state: nodes, their sessions (join → leave/lost), status streams and liveness."""
from .registry import Cluster, Node, Session, StatusStream

__all__ = ["Cluster", "Node", "Session", "StatusStream"]
