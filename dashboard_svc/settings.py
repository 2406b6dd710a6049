"""dashboard_svc's section of the settings (the common part is `svclib.config.Settings`), read at start by
svclib.runtime (`ServiceSpec.section`) and handed to the wiring as `runtime.section`: the calculation's
`DashboardConfig`."""

from __future__ import annotations

from dashboard_svc.model import DashboardConfig
from svclib.config import EnvReader


def read_dashboard_section(r: EnvReader) -> DashboardConfig:
    return DashboardConfig(
        base_currency=r.currency("FINPULSE_BASE_CURRENCY", "RUB"),  # balances in others are shown, never converted
        safety_buffer=r.money("FINPULSE_SAFETY_BUFFER", "3000.00"),  # kept aside by safe-to-spend
    )
