"""A bank that fails completely for two minutes, under a user who keeps refreshing (the running suite,
its emulator): the calls that reach the failing bank are bounded by its breaker (bankapi.breaker:
5 failures open it, then one trial per cooldown of 10, 20, 40… s), the sync status and the dashboard
say which bank fails, since when and when it is tried next, the other bank keeps syncing, and
everything recovers by itself once the bank answers again.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aiohttp
import pytest

from tests.e2e import eventually, onboard, wait_synced

pytestmark = pytest.mark.slow

USER = "team200-41"  # its own customer: the refreshing makes many jobs
OUTAGE = 120.0  # seconds, as the issue names it
#: At most this many requests reach the failing bank during the outage: 5 failed calls open the breaker
#: (the first job's call and its 3 retries, then the next attempt's call), then one trial per cooldown
#: (+10 s, +30 s, +70 s): 8; the margin covers a trial landing just inside the window.
BOUND = 10


async def _requests(session: aiohttp.ClientSession, bank_url: str) -> int:
    async with session.get(f"{bank_url}/__admin__/requests") as resp:
        assert resp.status == 200
        return (await resp.json())["total"]


async def test_a_failing_bank_gets_bounded_calls_says_why_and_recovers(http, bank_urls):
    await onboard(http, USER, ("vbank", "abank"), wait=True)
    async with aiohttp.ClientSession() as session:
        await session.delete(f"{bank_urls['abank']}/__admin__/requests")
        async with session.post(f"{bank_urls['abank']}/__admin__/down", json={"down": True}) as resp:
            assert resp.status == 200
        started = time.monotonic()
        refreshes = statuses = 0
        explained = dashboard_explained = False
        try:
            while time.monotonic() - started < OUTAGE:  # a user refreshing every 5 s
                status, _ = await http.post("/api/sync", {"user_id": USER})
                assert status == 200
                refreshes += 1
                status, body = await http.get("/api/sync/status", user_id=USER)
                assert status == 200
                statuses += 1
                abank = next(b for b in body["banks"] if b["bank_id"] == "abank")
                if "failing since" in (abank.get("last_error") or "") and abank.get("next_attempt_at"):
                    explained = True
                status, dashboard = await http.get("/api/dashboard", user_id=USER)
                assert status == 200
                if any(r.startswith("данные ABank не обновляются") for r in dashboard["health_score"]["reasons"]):
                    dashboard_explained = True
                await asyncio.sleep(5)
            reached = await _requests(session, bank_urls["abank"])
        finally:
            async with session.post(f"{bank_urls['abank']}/__admin__/down", json={"down": False}) as resp:
                assert resp.status == 200
        print(
            f"bank outage: {OUTAGE:.0f} s, {refreshes} refreshes, {reached} requests reached the failing bank "
            f"(bound {BOUND})",
            file=sys.stderr,
        )
        assert reached <= BOUND, f"{reached} requests reached the failing bank in {OUTAGE:.0f} s"
        assert explained, "the sync status says since when the bank fails and when it is tried next"
        assert dashboard_explained, "the dashboard names the failing bank and why"

        # Recovery: the next trial (at most one cooldown away) succeeds, and the job completes by itself.
        recovered_from = time.monotonic()
        synced = await wait_synced(http, USER, timeout=180)
        abank = next(b for b in synced["banks"] if b["bank_id"] == "abank")
        assert abank["state"] == "JOB_STATE_SUCCEEDED", abank
        print(
            f"bank outage: recovered {time.monotonic() - recovered_from:.0f} s after the bank came back",
            file=sys.stderr,
        )

        async def dashboard_clear():
            status, body = await http.get("/api/dashboard", user_id=USER, force_refresh="true")
            return status == 200 and not any("ABank" in r for r in body["health_score"]["reasons"])

        assert await eventually(dashboard_clear, timeout=30), "the note goes once the bank's data is fresh again"
