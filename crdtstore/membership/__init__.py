"""Cluster membership: member records (replicated) and failure detection (local, pure)."""

from crdtstore.membership.detector import FailureDetector, MemberStatus, StatusChange
from crdtstore.membership.records import MEMBERS_NAMESPACE, MemberRecord

__all__ = ["MEMBERS_NAMESPACE", "FailureDetector", "MemberRecord", "MemberStatus", "StatusChange"]
