"""The dashboard calculation's public entry: `compute_all(data, lang)` (the dashboard, loans, deposits and
refinancing answers from one analysis pass) and `compute(data, lang)` (the dashboard alone).

The calculation itself lives in `dashboard_svc.domain` (pure: no I/O, no gRPC, no SQL), one module per
seam: income, loans, safe-to-spend and events, accounts, health, refinancing, texts, and the assembly
(`dashboard_svc.domain.assemble`); its package docstring states the conventions.
"""

from __future__ import annotations

from dashboard_svc.domain.assemble import compute, compute_all

__all__ = ["compute", "compute_all"]
