"""FinPulse REST gateway: the documented HTTP endpoints, transcoded to the services' gRPC APIs.

Modules: `routes` (route table from the google.api.http annotations), `transcode` (JSON <-> protobuf),
`errors` (gRPC code -> HTTP status, JSON error body), `middleware` (request id, access log, CORS,
errors), `app` (`create_app`), `__main__` (`python -m gateway`).
"""
