"""``callwarden serve --only asterisk`` as operators run it: a real process, a config file,
ephemeral ports, the simulated Asterisk driving calls into it, SIGTERM to stop it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from sqlalchemy import select

from callwarden.policy import reason
from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.models import Call
from tests.agi.harness import AMI_SECRET, AMI_USER, FAST, REFUSED, call_spec, free_port, run
from tests.conftest import seed
from tests.sim.asterisk import AmiServer, OutboundCall, Pbx

CALLWARDEN = Path(sys.executable).with_name("callwarden")


async def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"callwarden serve exited early with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError("callwarden serve did not start listening") from None
            await asyncio.sleep(0.1)


def test_callwarden_serve_only_asterisk(sqlite_url, tmp_path) -> None:
    seed(sqlite_url)
    agi_port = free_port()
    log_path = tmp_path / "serve.log"

    async def body() -> None:
        pbx = Pbx(cel=False)
        async with AmiServer(pbx, users={AMI_USER: AMI_SECRET}) as ami:
            config = tmp_path / "callwarden.yaml"
            config.write_text(yaml.safe_dump({
                "store": {"url": sqlite_url},
                "recording": {"dir": str(tmp_path / "rec")},
                "logging": {"format": "json", "level": "info"},
                "asterisk": {"agi": {"host": "127.0.0.1", "port": agi_port},
                             "ami": {"host": "127.0.0.1", "port": ami.port,
                                     "username": AMI_USER, "secret": AMI_SECRET}},
            }), encoding="utf-8")
            with log_path.open("wb") as log:
                proc = subprocess.Popen([str(CALLWARDEN), "--config", str(config), "serve",
                                         "--only", "asterisk"], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "CALLWARDEN_ACTOR": "test"})
            try:
                await wait_port(agi_port, proc)
                await ami.wait_logged_in(1, timeout=10)
                # a refused callee is denied at any hour: the test does not depend on the clock
                call = OutboundCall(pbx, call_spec(agi_port, callee=REFUSED), timing=FAST)
                result = await call.run(agi_port=agi_port, talk_time=0.05)
                reasons = result.variables["CALLWARDEN_REASONS"].split(",")
                assert reasons[0] == "CALLEE_REFUSED"
                assert (result.hangup_source, result.hangup_cause) == \
                    ("agi", reason("CALLEE_REFUSED").cause_code)
                inbound = OutboundCall(pbx, call_spec(agi_port, route="inbound", callee="95512",
                                                      caller="13600136000"), timing=FAST)
                result = await inbound.run(agi_port=agi_port, talk_time=0.05)
                assert result.variables["CALLWARDEN_DECISION"] == "allow"
                sessions = make_sessionmaker(make_engine(sqlite_url))
                deadline = time.monotonic() + 10
                while True:  # both CDRs completed by the process's AMI listener
                    with sessions() as s:
                        rows = s.scalars(select(Call).where(Call.pbx_call_id.in_(
                            [call.spec.uniqueid2, inbound.spec.uniqueid2]))).all()
                    if len(rows) == 2 and all(r.ended_at for r in rows):
                        break
                    assert time.monotonic() < deadline, "CDRs not completed"
                    await asyncio.sleep(0.1)
                by_id = {r.pbx_call_id: r for r in rows}
                assert by_id[call.spec.uniqueid2].decision == "deny"
                assert by_id[inbound.spec.uniqueid2].direction == "inbound"
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    rc = proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    raise
            assert rc == 0

    run(body(), timeout=90)
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    calls = [e for e in events if e.get("event") == "agi_call"]
    assert [c["route"] for c in calls] == ["outbound", "inbound"]
    assert calls[0]["callee"] == "139****9000" and REFUSED not in log_path.read_text()
    assert {"agi_listening", "ami_connected", "asterisk_adapter_stopped"} <= {e.get("event") for e in events}
