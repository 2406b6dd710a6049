"""Shared runtime of the FinPulse services: config, logging, gRPC server, DB, cache, clients."""
