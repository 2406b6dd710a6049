import pathlib
import sys

from dashboard_svc.settings import read_dashboard_section
from dashboard_svc.wiring import setup
from svclib.runtime import ServiceSpec, main

SPEC = ServiceSpec(
    name="dashboard",
    schema="dashboard",
    migrations=pathlib.Path(__file__).with_name("migrations"),
    setup=setup,
    section=read_dashboard_section,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
