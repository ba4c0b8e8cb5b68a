"""Reports: the per-layer width audit and the width sweep, serial or on Dask."""
from .audit import AuditReport, TensorAudit, audit
from .sweep import Criterion, SweepReport, sweep

__all__ = ["AuditReport", "Criterion", "SweepReport", "TensorAudit", "audit", "sweep"]
