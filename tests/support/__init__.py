"""Helpers shared by the test files (and the benchmarks): not tests themselves.

- `env`: the in-process server as tests see it, SQL helpers for an environment database, and
  AWS access pointed at moto (the pytest fixtures that build them stay in `tests/conftest.py`);
- `cli`: the real `iasql` command as a subprocess;
- `wire`: wire-protocol bytes for the sans-IO session;
- `aws`: module mappers and boto3 clients against moto, and certificates to import;
- `http_relay`: a TCP relay that delays each HTTP request, for tests and benchmarks.
"""
