"""Reports: the per-layer width audit."""
from .audit import AuditReport, TensorAudit, audit

__all__ = ["AuditReport", "TensorAudit", "audit"]
