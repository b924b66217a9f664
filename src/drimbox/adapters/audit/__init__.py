"""The access trail's adapters: FHIR AuditEvent shaping and the hash-chained JSONL store."""

from drimbox.adapters.audit.fhir import to_audit_event
from drimbox.adapters.audit.jsonl_trail import JsonlTrail

__all__ = ["JsonlTrail", "to_audit_event"]
