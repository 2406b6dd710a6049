"""The data-version contract between sync_svc and its readers, through Redis (pure: names only).

sync_svc owns a user's data version (a counter its storage raises on every committed change) and,
after each commit, raises the Redis key `data_version_key(prefix, user_id)` to it (never backwards)
for `DATA_VERSION_TTL` seconds. dashboard_svc reads that key to tell whether its cached dashboard is
still current, and asks sync_svc (`GetDataVersion`) when the key is missing (Redis restarted, or
down). Nothing else about either service's Redis use is shared: the dashboard's own cache keys live
in dashboard_svc, sync's in sync_svc.
"""

from __future__ import annotations

#: Seconds the published version lives; readers fall back to asking sync_svc once it is gone.
DATA_VERSION_TTL = 24 * 3600


def data_version_key(prefix: str, user_id: str) -> str:
    """The Redis key of `user_id`'s data version under the suite's key prefix (`Cache.prefix`)."""
    return f"{prefix}dataversion:{user_id}"
