import pathlib
import sys

from svclib.runtime import ServiceSpec, main
from sync_svc.servicer import setup

SPEC = ServiceSpec(name="sync", schema="sync",
                   migrations=pathlib.Path(__file__).with_name("migrations"), setup=setup, calls_banks=True)

if __name__ == "__main__":
    sys.exit(main(SPEC))
