"""``callwarden serve`` starts the console when the config has ``web:`` (beside the Asterisk side,
or alone), and stops it with SIGTERM."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.ops.helpers import free_port
from tests.ops.test_serve_stack import Serve, stack_config


def _login_page(port: int, serve: Serve, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        assert serve.proc.poll() is None, serve.log.read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/login", timeout=2)
        except httpx.TransportError:
            assert time.monotonic() < deadline, serve.log.read_text()[-3000:]
            time.sleep(0.2)


@pytest.mark.parametrize("with_asterisk", [True, False])
def test_serve_runs_the_console(sqlite_url, tmp_path, with_asterisk):
    port = free_port()
    web = {"host": "127.0.0.1", "port": port, "session_secret_file": str(tmp_path / "s.key")}
    config = stack_config(tmp_path, sqlite_url, ami_port=free_port() if with_asterisk else None,
                          esl_port=None, web=web)
    serve = Serve(tmp_path, config)
    try:
        r = _login_page(port, serve)
        assert r.status_code == 200 and 'name="csrf_token"' in r.text
        if with_asterisk:  # the FastAGI server listens in the same process
            with socket.create_connection(("127.0.0.1", config["asterisk"]["agi"]["port"]), timeout=5):
                pass
        assert any(e.get("address") == f"http://127.0.0.1:{port}/" for e in serve.events("web_console_started"))
    finally:
        assert serve.stop() == 0
    assert (tmp_path / "s.key").stat().st_mode & 0o777 == 0o600


def test_doctor_checks_the_console_port(sqlite_url, tmp_path):
    from tests.ops.test_doctor import run_doctor

    port = free_port()
    config = {"store": {"url": sqlite_url}, "recording": {"dir": str(tmp_path / "rec")},
              "logging": {"format": "console", "level": "warning"}, "metrics": None,
              "web": {"host": "127.0.0.1", "port": port}}
    code, checks = run_doctor(tmp_path, config)
    assert checks["web console port"]["status"] == "PASS", checks
    with socket.socket() as held:  # bound by another program, not serving
        held.bind(("127.0.0.1", port))
        code, checks = run_doctor(tmp_path, config)
    assert code == 1 and checks["web console port"]["status"] == "FAIL"
