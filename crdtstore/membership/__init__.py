"""Cluster membership: member records (replicated) and the overlay protocol (local, pure)."""

from crdtstore.membership.detector import MemberStatus, StatusChange
from crdtstore.membership.records import MEMBERS_NAMESPACE, MemberRecord

__all__ = ["MEMBERS_NAMESPACE", "MemberRecord", "MemberStatus", "StatusChange"]
