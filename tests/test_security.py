"""Security settings and secrets: SASL/SSL reach librdkafka, secrets reach nothing else.

Unit level: the Settings' SASL/SSL fields (from init kwargs and from the environment) and
librdkafka passthrough settings end up in the consumer and producer configurations, and
librdkafka accepts them. Process level: `worker --check-config` and a failed configuration
never show a secret. The running worker's logs (at DEBUG, `worker_started` included) and
/metrics never show it either, and its metrics endpoint binds to the configured address and
port only: checked on the hostile run's worker (tests/test_hostile_input.py), configured
with SECRET_WORKER_ENV below.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import certifi
import pytest
from confluent_kafka import Consumer, Producer

from tests.worker_process import (
    REPO,
    WORKER_COMMAND,
)
from worker.config import Settings
from worker.runner import consumer_config, producer_config

SASL_PASSWORD = "pw-Sasl-7f3e9c2b1a"  # noqa: S105 - a test secret, searched for in outputs
KEY_PASSWORD = "pw-Key-5d1c8e4f2a"  # noqa: S105
OAUTH_SECRET = "pw-Oauth-9b7a6c5d4e"  # noqa: S105
MASK = "**********"


def _secure_kafka() -> dict[str, object]:
    return {
        "bootstrap_servers": "127.0.0.1:1",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "ticket-router",
        "sasl_password": SASL_PASSWORD,
        "ssl_ca_location": certifi.where(),
        "extra": {"ssl.endpoint.identification.algorithm": "https", "client.rack": "eu-1a"},
    }


def _assert_secure(conf: dict[str, str]) -> None:
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "ticket-router"
    assert conf["sasl.password"] == SASL_PASSWORD  # librdkafka needs it in clear
    assert conf["ssl.ca.location"] == certifi.where()
    assert conf["ssl.endpoint.identification.algorithm"] == "https"
    assert conf["client.rack"] == "eu-1a"


def test_sasl_and_ssl_settings_reach_both_librdkafka_clients() -> None:
    settings = Settings(kafka=_secure_kafka())
    consumer_conf, producer_conf = consumer_config(settings), producer_config(settings)
    _assert_secure(consumer_conf)
    _assert_secure(producer_conf)
    # librdkafka validates every property name and value when a client is built.
    Producer(producer_conf).flush(0)
    Consumer(consumer_conf).close()


def test_sasl_and_ssl_settings_from_the_environment_reach_librdkafka(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka = _secure_kafka()
    for name, value in kafka.items():
        env_value = json.dumps(value) if isinstance(value, dict) else str(value)
        monkeypatch.setenv(f"ROUTER_KAFKA__{name.upper()}", env_value)
    settings = Settings()
    _assert_secure(consumer_config(settings))
    _assert_secure(producer_config(settings))
    assert repr(settings).count(SASL_PASSWORD) == 0


def test_enforced_settings_still_win_over_passthrough_on_a_secured_cluster() -> None:
    kafka = {**_secure_kafka(), "extra": {"enable.auto.commit": "true", "acks": "1"}}
    settings = Settings(kafka=kafka)
    assert consumer_config(settings)["enable.auto.commit"] == "false"
    assert producer_config(settings)["acks"] == "all"
    assert consumer_config(settings)["sasl.password"] == SASL_PASSWORD


# ---------------------------------------------------------------------------- the CLI


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*WORKER_COMMAND, *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


SECRET_ENV = {
    "ROUTER_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
    "ROUTER_KAFKA__SASL_MECHANISM": "PLAIN",
    "ROUTER_KAFKA__SASL_USERNAME": "ticket-router",
    "ROUTER_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
}


@pytest.mark.integration  # the worker command as a child process
def test_check_config_prints_the_settings_with_the_sasl_password_masked() -> None:
    done = _cli(SECRET_ENV, "--check-config")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["kafka"]["sasl_password"] == MASK
    assert shown["kafka"]["sasl_username"] == "ticket-router"
    assert SASL_PASSWORD not in done.stdout + done.stderr


@pytest.mark.integration  # the worker command as a child process
def test_check_config_masks_librdkafka_secrets_given_as_passthrough_settings() -> None:
    """`kafka.extra` is the only way to give librdkafka's other secrets (an SSL key
    password, an OAuth client secret): they must be masked like sasl_password."""
    extra = {"ssl.key.password": KEY_PASSWORD, "sasl.oauthbearer.client.secret": OAUTH_SECRET}
    done = _cli({**SECRET_ENV, "ROUTER_KAFKA__EXTRA": json.dumps(extra)}, "--check-config")
    assert done.returncode == 0, done.stderr
    for secret in (SASL_PASSWORD, KEY_PASSWORD, OAUTH_SECRET):
        assert secret not in done.stdout + done.stderr, f"{secret} shown in clear"


@pytest.mark.integration  # the worker command as a child process
def test_invalid_configuration_is_refused_without_showing_the_password() -> None:
    # Grace longer than the poll interval: refused by a cross-field rule (exit code 2).
    done = _cli({**SECRET_ENV, "ROUTER_SHUTDOWN_GRACE_S": "400"}, "--check-config")
    assert done.returncode == 2
    assert "shutdown_grace_s" in done.stdout + done.stderr
    assert SASL_PASSWORD not in done.stdout + done.stderr


# ---------------------------------------------------------------------------- the worker
# The running worker (DEBUG logs, /metrics, the metrics address) is checked on the hostile
# run's worker, which is configured with these secrets: tests/test_hostile_input.py.


def connection_refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


# What a worker that must never show its secret is configured with. SASL settings without
# SASL on the wire (the embedded broker speaks PLAINTEXT): the secret is configured, logged
# about and handed to librdkafka all the same.
SECRET_WORKER_ENV = {
    "ROUTER_KAFKA__SASL_MECHANISM": "PLAIN",
    "ROUTER_KAFKA__SASL_USERNAME": "ticket-router",
    "ROUTER_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
    "ROUTER_LOG_LEVEL": "DEBUG",
}
