"""Local emulator of the banks' Open Banking API (vbank, abank, sbank) for development, tests and benchmarks."""

from bank_sandbox.app import RunningBanks, create_bank_app, start_banks
from bank_sandbox.config import Faults, SandboxConfig
from bank_sandbox.state import Registry

__all__ = ["Faults", "Registry", "RunningBanks", "SandboxConfig", "create_bank_app", "start_banks"]
