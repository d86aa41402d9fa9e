"""Fixtures for tests against a real Consul agent (see docs/testing.md).

- consul_agent:  session scope, one `consul agent -dev` shared by the whole run; use unique service IDs/keys.
- fresh_consul:  function scope, a new agent per test, for tests that stop/kill/pause/restart it.
- consul_client: a python-consul2 client bound to consul_agent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import consul
import pytest
from hypothesis import settings

from tests.backends import Backend
from tests.consul_agent import ConsulAgent
from tests.consul_helpers import make_client

# CI (`.ci/run` sets CI=true): the property tests draw the same examples every run, so a submission's CI
# verdict does not depend on which random cases came up. `make test` elsewhere keeps exploring new ones;
# a case found that way becomes a fixed test (e.g. test_table.py::test_a_rejected_line_never_displaces_...).
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def consul_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(workdir=tmp_path_factory.mktemp("consul-session"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def fresh_consul(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(workdir=tmp_path_factory.mktemp("consul-fresh"))
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def consul_client(consul_agent: ConsulAgent) -> consul.Consul:
    return make_client(consul_agent.port)


@pytest.fixture
def backends() -> Iterator[list[Backend]]:
    """A list to put started test backends in; they are all stopped after the test."""
    started: list[Backend] = []
    yield started
    for b in started:
        b.stop()
