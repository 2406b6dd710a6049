"""sync_svc's section of the settings (the common part is `svclib.config.Settings`), read at start by
svclib.runtime (`ServiceSpec.section`) and handed to the wiring as `runtime.section`."""

from __future__ import annotations

import dataclasses

from svclib.config import EnvReader


@dataclasses.dataclass(frozen=True)
class SyncSettings:
    workers: int = 16  # sync jobs one sync_svc process runs at once (mostly waiting on banks and their rate caps)
    concurrency: int = 8  # bank requests one sync job has in flight at once
    lease: float = 30.0  # seconds a job stays claimed without a heartbeat (a dead worker's job waits this)
    bank_rate_limit: float = 50.0  # requests per second per bank, shared by every replica (sandbox asks < 100)


def read_sync_section(r: EnvReader) -> SyncSettings:
    return SyncSettings(
        workers=r.integer("FINPULSE_SYNC_WORKERS", 16, 1, 64),
        concurrency=r.integer("FINPULSE_SYNC_CONCURRENCY", 8, 1, 64),
        lease=r.number("FINPULSE_SYNC_LEASE", 30.0, 2.0, 3600.0),
        bank_rate_limit=r.number("FINPULSE_BANK_RATE_LIMIT", 50.0, 0.1, 10000.0),
    )
