import pathlib
import sys

from onboarding_svc.wiring import setup
from svclib.runtime import ServiceSpec, main

SPEC = ServiceSpec(
    name="onboarding", schema="onboarding", migrations=pathlib.Path(__file__).with_name("migrations"), setup=setup
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
