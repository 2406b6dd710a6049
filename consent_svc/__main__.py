import pathlib
import sys

from consent_svc.wiring import setup
from svclib.runtime import ServiceSpec, main

SPEC = ServiceSpec(
    name="consent",
    schema="consent",
    migrations=pathlib.Path(__file__).with_name("migrations"),
    setup=setup,
    calls_banks=True,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
