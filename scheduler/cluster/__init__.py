"""Cluster state: nodes, their sessions (join → leave/lost), status streams and liveness."""

from .registry import Cluster, FollowUps, Node, Session, StatusStream, open_cluster

__all__ = ["Cluster", "FollowUps", "Node", "Session", "StatusStream", "open_cluster"]
