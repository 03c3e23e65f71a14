"""The AMI listener against the simulated Asterisk: caller-ID policing, CDR completion without
Cdr events, reconnection with backoff, reconciliation of calls missed while disconnected."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

from structlog.testing import capture_logs

from callwarden.agi.ami import AmiTuning
from callwarden.agi.ami.reconcile import CAUSE_NOT_SEEN
from callwarden.policy import reason
from tests.agi.harness import (
    AMI_SECRET,
    AMI_USER,
    FAST_AMI,
    REFUSED,
    TENANT,
    asterisk_settings,
    free_port,
    record_like_mixmonitor,
    rig,
    run,
)
from tests.sim.asterisk import AmiServer, Channel, Pbx

CID_ALTERED_CAUSE = reason("CID_ALTERED").cause_code


async def until_bridged(call, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while call.o2.bridge_id == "":
            await asyncio.sleep(0.01)


def test_caller_id_changed_mid_call_is_torn_down_via_ami(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            call = r.outbound_call()
            task = asyncio.ensure_future(call.run(agi_port=r.port, talk_time=30))
            await until_bridged(call)
            call.change_callerid(num="01087654321")
            hangup = await r.ami.wait_action("Hangup", timeout=5)
            assert (hangup.get("Channel"), hangup.get("Cause")) == (call.o2.name, str(CID_ALTERED_CAUSE))
            await asyncio.wait_for(task, 5)  # the simulated call ended because of it
            assert (call.o2.hangup_source, call.o2.hangup_cause) == ("ami", CID_ALTERED_CAUSE)
            row = await r.wait_ended(call.spec.uniqueid2)
            assert row.decision == "deny" and "CID_ALTERED" in row.reasons.split(",")
            assert row.hangup_cause == "CALL_REJECTED" and row.disposition == "ANSWERED"
            assert r.audit_actions(row.call_id)[:3] == ["decision", "cid_altered", "call_ended"]

    run(body())


def test_presentation_restricted_mid_call_is_torn_down(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            call = r.outbound_call()
            task = asyncio.ensure_future(call.run(agi_port=r.port, talk_time=30))
            await until_bridged(call)
            call.change_callerid(pres="prohib_not_screened")  # same number, now withheld
            await r.ami.wait_action("Hangup", timeout=5, Channel=call.o2.name)
            await asyncio.wait_for(task, 5)
            row = await r.wait_ended(call.spec.uniqueid2)
            assert "CID_ALTERED" in row.reasons.split(",")

    run(body())


def test_same_caller_id_or_a_stale_event_is_not_a_change(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            call = r.outbound_call()
            task = asyncio.ensure_future(call.run(agi_port=r.port, talk_time=0.6))
            await until_bridged(call)
            call.change_callerid(num="+86 95512", name="Someone else")  # same number, normalized
            await asyncio.sleep(0.1)
            assert not r.ami.actions_named("Getvar")
            # an event whose number is already gone again when it is checked: stale
            call.change_callerid(num="01087654321")
            call.change_callerid(num="95512")
            await asyncio.wait_for(task, 5)
            row = await r.wait_ended(call.spec.uniqueid2)
            assert (row.decision, row.reasons) == ("allow", "")
            assert [a.get("Variable") for a in r.ami.actions_named("Getvar")] == \
                ["CALLERID(num)", "CALLERID(pres)"]  # checked against the live channel
            assert not r.ami.actions_named("Hangup")

    run(body())


def test_dial_presenting_another_number_is_torn_down(make_settings, seeded_url) -> None:
    """``Dial(...,f(<num>))`` or a pre-dial handler can present another number to the callee:
    DialBegin's DestConnectedLineNum shows it."""

    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            agi = r.agi_call()
            result = await agi.run(timeout=10)
            assert result.variables["CALLWARDEN_DECISION"] == "allow"
            chan = agi.channel
            chan.priority += 1  # the dialplan moved on to its Dial() step
            dest = Channel(name="PJSIP/carrier-00000abc", connected_num="01099998888")
            r.pbx.emit("DialBegin", chan.snapshot() + dest.snapshot("Dest"))
            hangup = await r.ami.wait_action("Hangup", timeout=5)
            assert (hangup.get("Channel"), hangup.get("Cause")) == (chan.name, str(CID_ALTERED_CAUSE))
            row = await r.wait_ended(chan.uniqueid)
            assert "CID_ALTERED" in row.reasons.split(",")

    run(body())


def test_observe_mode_records_cid_altered_without_tearing_down(make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, mode="observe") as r:
            call = r.outbound_call()
            task = asyncio.ensure_future(call.run(agi_port=r.port, talk_time=0.8))
            await until_bridged(call)
            call.change_callerid(num="01087654321")
            await asyncio.wait_for(task, 5)
            row = await r.wait_ended(call.spec.uniqueid2)
            assert "CID_ALTERED" in row.reasons.split(",") and not row.enforced
            assert not r.ami.actions_named("Hangup") and call.o2.hangup_source != "ami"

    run(body())


class NoCdrAmiServer(AmiServer):
    """An AMI user without the ``cdr`` read permission: Cdr events never reach it."""

    def _broadcast(self, event: str, privilege: str, data: bytes) -> None:
        if event != "Cdr":
            super()._broadcast(event, privilege, data)


def test_cdr_completed_from_hangup_and_newstate_when_no_cdr_events(make_settings, seeded_url) -> None:
    async def body() -> None:
        pbx = Pbx(cel=False)
        server = await NoCdrAmiServer(pbx, users={AMI_USER: AMI_SECRET}).start()
        settings = asterisk_settings(make_settings, seeded_url, ami_port=server.port)
        try:
            async with rig(make_settings, seeded_url, pbx=pbx, settings=settings, with_ami=False) as r:
                await server.wait_logged_in(1)
                call = r.outbound_call()
                await call.run(agi_port=r.port, talk_time=1.1)
                row = await r.wait_ended(call.spec.uniqueid2)
                assert (row.disposition, row.hangup_cause) == ("ANSWERED", "NORMAL_CLEARING")
                assert row.billsec >= 1 and row.answered_at is not None
        finally:
            await server.close()

    run(body())


# -- disconnects and reconciliation ----------------------------------------------------------------


def cdr_csv_from_events(pbx: Pbx, path: Path) -> None:
    """Write the Cdr events the PBX produced as Asterisk's cdr_csv writes Master.csv."""
    with path.open("w", encoding="utf-8", newline="") as f:
        for data in pbx.events:
            if not data.startswith(b"Event: Cdr\r\n"):
                continue
            h = dict(line.split(": ", 1) for line in data.decode().split("\r\n") if ": " in line)
            cols = [h["AccountCode"], h["Source"], h["Destination"], h["DestinationContext"],
                    h["CallerID"], h["Channel"], h["DestinationChannel"], h["LastApplication"],
                    h["LastData"], h["StartTime"], h["AnswerTime"], h["EndTime"], h["Duration"],
                    h["BillableSeconds"], h["Disposition"], h["AMAFlags"], h["UniqueID"],
                    h["UserField"]]
            quoted = [("" if (i == 10 and not v) else v if i in (12, 13) else
                       '"' + v.replace('"', '""') + '"') for i, v in enumerate(cols)]
            f.write(",".join(quoted) + "\n")
    assert list(csv.reader(path.open(encoding="utf-8")))  # well-formed


def test_ami_drop_and_reconnect_completes_the_missed_cdr_from_master_csv(
        make_settings, seeded_url, tmp_path) -> None:
    master = tmp_path / "Master.csv"
    master.write_text("", encoding="utf-8")

    async def body() -> None:
        # a PBX in China time: Master.csv holds local times, which must land right in UTC
        pbx = Pbx(cel=False, tz=ZoneInfo("Asia/Shanghai"))
        with capture_logs() as logs:
            async with rig(make_settings, seeded_url, pbx=pbx,
                           asterisk={"ami": {"cdr_csv": str(master)}}) as r:
                record_like_mixmonitor(pbx)
                call = r.outbound_call()
                task = asyncio.ensure_future(call.run(agi_port=r.port, talk_time=1.1))
                await until_bridged(call)
                await r.ami.refuse_connections()
                await r.ami.drop_clients()  # Asterisk restarts: AMI gone, the call goes on
                await asyncio.wait_for(task, 5)  # ... and ends while nobody listens
                cdr_csv_from_events(pbx, master)
                assert r.call_row(call.spec.uniqueid2).ended_at is None
                await r.ami.accept_connections()
                row = await r.wait_ended(call.spec.uniqueid2)
                assert r.adapter.ami.sessions >= 2
                hangup = next(float(m.split(b"Timestamp: ")[1].split(b"\r\n")[0])
                              for m in pbx.events if m.startswith(b"Event: Hangup\r\n")
                              and call.o2.name.encode() in m)
                ended_utc = dt.datetime.fromtimestamp(int(hangup), dt.UTC)
                assert abs((row.ended_at - ended_utc).total_seconds()) <= 1
                assert (row.disposition, row.decision) == ("ANSWERED", "allow")
                assert row.billsec >= 1 and row.answered_at is not None
                rec = await r.wait_for(lambda: (x := r.recording_row(row)) and x.status == "stored"
                                       and x, what="the recording to be finalized")
                assert rec.sha256
        reconciled = [e for e in logs if e["event"] == "ami_reconciled"]
        assert [(e["pbx_call_id"], e["source"]) for e in reconciled] == [(call.spec.uniqueid2, "cdr_csv")]

    run(body())


def test_missed_hangup_without_master_csv_is_closed_unknown_with_an_audit_trail(
        make_settings, seeded_url) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url) as r:
            call = r.outbound_call()
            task = asyncio.ensure_future(call.run(agi_port=r.port, talk_time=0.3))
            await until_bridged(call)
            await r.ami.refuse_connections()
            await r.ami.drop_clients()
            await asyncio.wait_for(task, 5)
            # calls keep being decided while AMI is away; this one is denied and hung up
            denied = r.outbound_call(callee=REFUSED)
            await denied.run(agi_port=r.port, talk_time=0.05)
            await r.ami.accept_connections()
            row = await r.wait_ended(call.spec.uniqueid2)
            assert (row.disposition, row.hangup_cause) == ("UNKNOWN", CAUSE_NOT_SEEN)
            assert row.decision == "allow"
            assert "call_ended" in r.audit_actions(row.call_id)
            row = await r.wait_ended(denied.spec.uniqueid2)
            assert (row.decision, row.disposition) == ("deny", "UNKNOWN")

    run(body())


def test_calls_still_up_across_a_reconnect_or_restart_stay_watched(make_settings, seeded_url) -> None:
    """A call that outlives the AMI connection (or callwarden itself) is found again by
    reconciliation: its caller ID is still policed and its CDR still completed."""

    async def body() -> None:
        pbx = Pbx(cel=False)
        async with rig(make_settings, seeded_url, pbx=pbx) as first:
            call = first.outbound_call()
            task = asyncio.ensure_future(call.run(agi_port=first.port, talk_time=30))
            await until_bridged(call)
        # callwarden restarted (the simulated PBX and its AMI server are new: same channels)
        async with rig(make_settings, seeded_url, pbx=pbx) as second:
            assert second.adapter.ami.last_reconcile.still_up == 1
            assert call.spec.uniqueid2 in second.adapter.book
            call.change_callerid(num="01087654321")
            await second.ami.wait_action("Hangup", timeout=5, Channel=call.o2.name)
            await asyncio.wait_for(task, 5)
            row = await second.wait_ended(call.spec.uniqueid2)
            assert "CID_ALTERED" in row.reasons.split(",") and row.disposition == "ANSWERED"

    run(body())


def test_ami_down_at_start_is_retried_with_backoff_and_agi_keeps_answering(
        make_settings, seeded_url) -> None:
    async def body() -> None:
        port = free_port()
        settings = asterisk_settings(make_settings, seeded_url, ami_port=port)
        with capture_logs() as logs:
            async with rig(make_settings, seeded_url, settings=settings, with_ami=False) as r:
                result = await r.agi_call().run(timeout=10)
                assert result.variables["CALLWARDEN_DECISION"] == "allow"
                async with asyncio.timeout(5):  # let it fail a few times first
                    while sum(e["event"] == "ami_connect_failed" for e in logs) < 4:
                        await asyncio.sleep(0.02)
                server = await AmiServer(r.pbx, users={AMI_USER: AMI_SECRET}, port=port).start()
                try:
                    await server.wait_logged_in(1, timeout=5)
                finally:
                    await server.close()
        failures = [e for e in logs if e["event"] == "ami_connect_failed"]
        delays = [e["retry_in_s"] for e in failures]
        assert len(failures) >= 4 and delays == sorted(delays)  # backing off, never faster
        assert delays[0] < delays[-1]
        assert max(delays) <= FAST_AMI.backoff_max_s

    run(body())


def test_wrong_ami_secret_is_retried_not_fatal(make_settings, seeded_url) -> None:
    async def body() -> None:
        pbx = Pbx(cel=False)
        server = await AmiServer(pbx, users={AMI_USER: "other"}, login_failure_delay=0).start()
        settings = asterisk_settings(make_settings, seeded_url, ami_port=server.port)
        try:
            with capture_logs() as logs:
                async with rig(make_settings, seeded_url, pbx=pbx, settings=settings,
                               with_ami=False) as r:
                    await asyncio.sleep(0.5)
                    result = await r.agi_call().run(timeout=10)
                    assert result.variables["CALLWARDEN_DECISION"] == "allow"
            assert len(server.actions_named("Login")) >= 2
            refused = [e for e in logs if e["event"] == "ami_connect_failed"]
            assert refused and "login refused" in refused[0]["detail"]
            assert AMI_SECRET not in str(logs)
        finally:
            await server.close()

    run(body())


async def silent_server(answer_login: bool):
    """An AMI peer that accepts connections, then never answers (or answers only Login)."""
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        buf = b""
        while data := await reader.read(4096):
            buf += data
            while b"\r\n\r\n" in buf:
                msg, buf = buf.split(b"\r\n\r\n", 1)
                if answer_login and b"Action: Login" in msg:
                    aid = msg.split(b"ActionID: ")[1].split(b"\r\n")[0]
                    writer.write(b"Response: Success\r\nActionID: " + aid +
                                 b"\r\nMessage: Authentication accepted\r\n\r\n")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, connections


def test_every_ami_action_has_a_deadline(make_settings, seeded_url) -> None:
    """A peer that never answers Login, or never answers Ping, is dropped and retried."""

    async def body() -> None:
        for answer_login in (False, True):
            server, connections = await silent_server(answer_login)
            port = server.sockets[0].getsockname()[1]
            settings = asterisk_settings(make_settings, seeded_url, ami_port=port)
            tuning = AmiTuning(connect_timeout_s=0.3, action_timeout_s=0.3,
                                        ping_interval_s=0.2, backoff_initial_s=0.05,
                                        backoff_max_s=0.1)
            with capture_logs() as logs:
                async with rig(make_settings, seeded_url, settings=settings, with_ami=False,
                               tuning=tuning):
                    async with asyncio.timeout(5):
                        while len(connections) < 3:
                            await asyncio.sleep(0.05)
            server.close()
            events = {e["event"] for e in logs}
            assert ("ami_connect_failed" in events) is not answer_login
            assert ("ami_ping_failed" in events) is answer_login

    run(body())


def test_inbound_call_is_logged_recorded_and_completed(make_settings, seeded_url, tmp_path) -> None:
    async def body() -> None:
        async with rig(make_settings, seeded_url, recording={"record_inbound": True}) as r:
            written = record_like_mixmonitor(r.pbx)
            call = r.outbound_call(route="inbound", caller="13600136000", callee="95512")
            result = await call.run(agi_port=r.port, talk_time=0.3)
            assert result.variables["CALLWARDEN_DECISION"] == "allow" and call.c1 is not None
            row = await r.wait_ended(call.spec.uniqueid2)
            assert (row.direction, row.caller, row.callee, row.tenant_id) == \
                ("inbound", "13600136000", "95512", TENANT)
            assert len(written) == 1 and written[0].is_relative_to(tmp_path / "rec" / "spool")
            rec = await r.wait_for(lambda: (x := r.recording_row(row)) and x.status == "stored" and x,
                                   what="the inbound recording to be finalized")
            assert rec.size > 44
            # the inbound call opened the callback window: calling back is allowed, no consent
            back = await r.agi_call(args=("13600136000",)).run(timeout=10)
            assert back.variables["CALLWARDEN_DECISION"] == "allow"
            assert r.call_row(back.env.split(b"agi_uniqueid: ")[1].split(b"\n")[0].decode()) \
                .consent_basis == "inbound-callback"

    run(body())


def test_servers_sharing_a_store_reconcile_only_their_own_calls(make_settings, seeded_url) -> None:
    """asterisk.conf systemname prefixes every uniqueid ("pbx-a-1795480861.8"): a server's
    reconciliation ends its own calls that vanished, never another server's, however absent
    those are from its own channel list."""
    from callwarden.policy import CallAttempt
    from tests.agi.harness import MONDAY_10AM

    def attempt(uniqueid: str) -> CallAttempt:
        return CallAttempt(tenant=TENANT, caller="95512", callee="13800138000", at=MONDAY_10AM,
                           trunk="ct-trunk-1", pbx="asterisk", pbx_call_id=uniqueid)

    async def body() -> None:
        pbx = Pbx(cel=False, system_name="pbx-a")
        async with rig(make_settings, seeded_url, pbx=pbx,
                       frequency={"per_day": 100, "per_week": 700}) as r:
            theirs = r.enforcer.decide(attempt("pbx-b-1795480861.7"))  # live on server B
            mine = r.enforcer.decide(attempt("pbx-a-1795480861.8"))  # gone while AMI was away
            legacy = r.enforcer.decide(attempt("1795480861.9"))  # no prefix: not ours either
            assert theirs.let_through and mine.let_through and legacy.let_through
            before = r.adapter.ami.reconciliations
            await r.ami.drop_clients()  # reconnect: reconciliation runs again
            row = await r.wait_ended("pbx-a-1795480861.8")
            assert (row.disposition, row.hangup_cause) == ("UNKNOWN", CAUSE_NOT_SEEN)
            await r.wait_for(lambda: r.adapter.ami.reconciliations > before, what="a reconciliation")
            assert r.call_row("pbx-b-1795480861.7").ended_at is None
            assert r.call_row("1795480861.9").ended_at is None

    run(body())


def test_a_systemname_too_long_for_the_stored_uniqueids_is_an_error(make_settings, seeded_url) -> None:
    async def body() -> None:
        with capture_logs() as logs:
            async with rig(make_settings, seeded_url, pbx=Pbx(cel=False, system_name="s" * 41)):
                pass
        errors = [e for e in logs if e["event"] == "ami_systemname_too_long"]
        assert len(errors) >= 1 and errors[0]["length"] == 41 and errors[0]["limit"] == 40

    run(body())


def test_a_systemname_of_40_characters_is_fine(make_settings, seeded_url) -> None:
    async def body() -> None:
        with capture_logs() as logs:
            async with rig(make_settings, seeded_url, pbx=Pbx(cel=False, system_name="s" * 40)):
                pass
        assert not [e for e in logs if e["event"] == "ami_systemname_too_long"]

    run(body())
