"""Benchmarks of the suite. Each module has `main() -> None` that prints its measurements and ratios
(measured in one run; not assertions). `python -m bench` runs them all, `python -m bench.<name>` one."""
