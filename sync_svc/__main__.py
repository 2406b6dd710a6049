import pathlib
import sys

from svclib.runtime import ServiceSpec, main
from sync_svc.settings import read_sync_section
from sync_svc.wiring import setup

SPEC = ServiceSpec(
    name="sync",
    schema="sync",
    migrations=pathlib.Path(__file__).with_name("migrations"),
    setup=setup,
    calls_banks=True,
    section=read_sync_section,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
