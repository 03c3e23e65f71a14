"""The console's routes in-process (Starlette TestClient) on SQLite and PostgreSQL: sign-in,
sessions, CSRF, tenant scoping (404 on every route), audit entries naming the user, range
requests, export, report, risk and registry edits."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from sqlalchemy import select
from starlette.routing import Route

from callwarden.audit.verify_bundle import verify_bundle
from callwarden.store.db import make_engine, make_sessionmaker
from callwarden.store.models import AuditEntry, Tenant
from tests.web.conftest import PASSWORDS, csrf_of, login


def entries(url: str, action: str | None = None) -> list[AuditEntry]:
    with make_sessionmaker(make_engine(url))() as s:
        q = select(AuditEntry).order_by(AuditEntry.seq)
        if action:
            q = q.where(AuditEntry.action == action)
        return list(s.scalars(q))


# -- sign-in, sessions ----------------------------------------------------------------------------

def test_pages_need_sign_in(cw):
    c = cw.client()
    for path in ("/calls", f"/calls/{cw.world.calls['a1']}", f"/calls/{cw.world.calls['a1']}/recording",
                 "/report", "/risk", "/registry"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path


def test_login_sets_a_hardened_cookie_and_logs_the_user(cw):
    c = cw.client()
    r = login(c, "inspector")
    assert r.status_code == 303 and r.headers["location"] == "/calls"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    last = entries(cw.world.url, "web.login")[-1]
    assert last.actor == "inspector" and last.subject == "inspector"
    assert c.get("/calls").status_code == 200


def test_wrong_password_then_rate_limit(cw):
    c = cw.client(login_attempts=3)
    for _ in range(3):
        assert login(c, "inspector", "wrong-password").status_code == 401
    r = login(c, "inspector")  # right password, but the limit is reached
    assert r.status_code == 429 and "登录失败次数过多" in r.text
    assert login(c, "root").status_code == 303  # another user from the same address is not blocked


def test_open_redirect_refused(cw):
    c = cw.client()
    token = csrf_of(c)
    r = c.post("/login", data={"username": "inspector", "password": PASSWORDS["inspector"],
                               "csrf_token": token, "next": "//evil.example/x"})
    assert r.status_code == 303 and r.headers["location"] == "/calls"


def test_idle_timeout_ends_the_session(cw, monkeypatch):
    import callwarden.web.pages as pages

    c = cw.client(idle_timeout_minutes=1)
    assert login(c, "inspector").status_code == 303
    assert c.get("/calls").status_code == 200
    real = pages.time.time
    monkeypatch.setattr(pages.time, "time", lambda: real() + 61)
    r = c.get("/calls")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert "会话已超时" in c.get(r.headers["location"]).text


def test_disabled_user_is_signed_out(cw, as_user):
    from callwarden.store.db import unit_of_work
    from callwarden.web.users import set_disabled

    c = as_user("inspector")
    with unit_of_work(make_sessionmaker(make_engine(cw.world.url))) as s:
        set_disabled(s, "root", "inspector", True)
    assert c.get("/calls").status_code == 303
    assert login(cw.client(), "inspector").status_code == 401


def test_language_switch(as_user):
    c = as_user("inspector")
    assert "通话查询" in c.get("/calls").text
    r = c.get("/lang/en?next=/calls")
    assert r.status_code == 303 and r.headers["location"] == "/calls"
    assert "Call search" in c.get("/calls").text


# -- CSRF -----------------------------------------------------------------------------------------

def post_routes(app) -> list[str]:
    return [r.path for r in app.routes if isinstance(r, Route) and "POST" in (r.methods or set())]


def test_every_post_route_refuses_a_missing_or_wrong_token(cw, as_user):
    c = as_user("root")
    paths = post_routes(c.app)
    assert {"/login", "/logout", "/export", "/registry", "/risk/{tenant}/status"} <= set(paths)
    before = len(entries(cw.world.url))
    for path in paths:
        url = path.replace("{tenant}", "acme")
        assert c.post(url, data={"action": "suspend", "reason": "x"}).status_code == 403, url
        assert c.post(url, data={"csrf_token": "forged", "action": "suspend", "reason": "x"}).status_code == 403, url
    assert len(entries(cw.world.url)) == before  # nothing happened
    with make_sessionmaker(make_engine(cw.world.url))() as s:
        assert s.get(Tenant, "acme").status == "active"


def test_foreign_origin_refused_even_with_the_token(cw, as_user):
    c = as_user("root")
    token = csrf_of(c, "/risk")
    r = c.post("/risk/acme/status", data={"csrf_token": token, "action": "suspend", "reason": "x"},
               headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    r = c.post("/risk/acme/status", data={"csrf_token": token, "action": "suspend", "reason": "x"},
               headers={"Origin": "http://testserver"})
    assert r.status_code == 303


# -- search and call page -------------------------------------------------------------------------

def test_search_masks_numbers_and_logs_the_search(cw, as_user):
    c = as_user("inspector")
    r = c.get("/calls?tenant=acme&decision=deny")
    assert r.status_code == 200
    w = cw.world
    for label in ("a3", "a4", "a5"):
        assert w.calls[label] in r.text
    assert w.calls["a1"] not in r.text and w.calls["b1"] not in r.text
    assert "13800138000" not in r.text and "138****8000" in r.text
    e = entries(w.url, "audit.search")[-1]
    details = json.loads(e.details)
    assert e.actor == "inspector" and details["filters"] == {"tenant": "acme", "decision": "deny"}
    assert details["via"] == "web"


def test_show_in_full_is_audit_logged(cw, as_user):
    c = as_user("inspector")
    r = c.get("/calls?callee=13800138000&full=1")
    assert "13800138000" in r.text
    e = entries(cw.world.url, "audit.full_numbers")[-1]
    assert e.actor == "inspector" and json.loads(e.details)["full_numbers"] is True
    r = c.get(f"/calls/{cw.world.calls['a1']}?full=1")
    assert "13800138000" in r.text
    e = entries(cw.world.url, "audit.full_numbers")[-1]
    assert e.subject == cw.world.calls["a1"] and e.actor == "inspector"


def test_bad_filter_is_a_clear_error(as_user):
    c = as_user("inspector")
    r = c.get("/calls?reason=NOPE")
    assert r.status_code == 400 and "unknown reason code" in r.text
    r = c.get("/calls?from=yesterday")
    assert r.status_code == 400 and "ISO-8601" in r.text


def test_paging(cw, as_user):
    c = cw.client(page_size=5)
    login(c, "inspector")
    first = c.get("/calls?tenant=acme")
    assert 'id="next"' in first.text and 'id="prev"' not in first.text
    second = c.get("/calls?tenant=acme&offset=5")
    assert 'id="prev"' in second.text
    ids = [cid for cid in cw.world.calls.values() if cid in first.text]
    assert len(ids) == 5 and not any(cid in second.text for cid in ids)


def test_call_page_shows_reasons_clauses_and_consent(cw, as_user):
    c = as_user("inspector")
    r = c.get(f"/calls/{cw.world.calls['a5']}")
    assert r.status_code == 200
    assert "CALLEE_REFUSED" in r.text and "NO_CONSENT" in r.text
    assert "被叫用户已谢绝来电" in r.text and "the callee is on the tenant" in r.text.lower() or "do-not-call" in r.text
    r = c.get(f"/calls/{cw.world.calls['a1']}")
    assert 'id="consent"' in r.text and "contract" in r.text  # the consent the call relied on
    assert "<audio" in r.text and "decision" in r.text  # the timeline has the decision entry
    assert c.get("/calls/no-such-call").status_code == 404


# -- tenant scoping: another tenant's data is 404, never shown ------------------------------------

def test_tenant_auditor_gets_404_for_another_tenant_everywhere(cw, as_user):
    w = cw.world
    c = as_user("beta-aud")
    a1, a2 = w.calls["a1"], w.calls["a2"]
    for path in (f"/calls/{a1}", f"/calls/{a1}?full=1", f"/calls/{a1}/recording",
                 f"/calls/{a2}/recording?download=1", f"/calls/{a1}/recording",
                 "/calls?tenant=acme", "/report/view?tenant=acme&from=2026-03-01&to=2026-03-31",
                 "/report/view?tenant=acme&from=2026-03-01&to=2026-03-31&format=json"):
        r = c.get(path, headers={"Range": "bytes=0-"})
        assert r.status_code == 404, path
        main = r.text.split("<main>", 1)[-1]
        assert "13800138000" not in main and a1 not in main and "138****8000" not in main
    token = csrf_of(c, "/calls")
    r = c.post("/export", data={"csrf_token": token, "tenant": "acme"})
    assert r.status_code == 404
    # its own calls only, whatever the filters
    r = c.get("/calls")
    assert w.calls["b1"] in r.text and a1 not in r.text
    r = c.get(f"/calls?call_id={a1}")
    assert 'id="no-results"' in r.text and f'href="/calls/{a1}' not in r.text
    # risk and registry: its own tenant only; no admin actions
    r = c.get("/risk")
    assert 'id="risk-beta"' in r.text and 'id="risk-acme"' not in r.text
    assert c.post("/risk/acme/status", data={"csrf_token": token, "action": "suspend",
                                             "reason": "x"}).status_code == 403
    r = c.get("/registry")
    assert "ct-trunk-1" not in r.text and "cm-trunk-9" in r.text
    # the recording of its own tenant's call is served
    assert c.get(f"/calls/{w.calls['b1']}").status_code == 200


def test_tenant_auditor_exports_only_its_tenant(cw, as_user):
    c = as_user("acme-aud")
    token = csrf_of(c, "/calls")
    r = c.post("/export", data={"csrf_token": token})
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        calls = json.loads(z.read("cdr/calls.json"))
    assert calls and {row["tenant"] for row in calls} == {"acme"}


# -- recordings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", ["a1", "a2"])  # a2 is encrypted at rest
def test_recording_range_requests(cw, as_user, label):
    w = cw.world
    c = as_user("inspector")
    plain = w.recordings[label].read_bytes()
    url = f"/calls/{w.calls[label]}/recording"
    plays = len(entries(w.url, "audit.recording"))
    r = c.get(url)
    assert r.status_code == 200 and r.content == plain and r.headers["content-type"] == "audio/wav"
    assert r.headers["accept-ranges"] == "bytes"
    r = c.get(url, headers={"Range": "bytes=0-"})
    assert r.status_code == 206 and r.content == plain
    assert r.headers["content-range"] == f"bytes 0-{len(plain) - 1}/{len(plain)}"
    r = c.get(url, headers={"Range": "bytes=100-1099"})
    assert r.status_code == 206 and r.content == plain[100:1100]
    r = c.get(url, headers={"Range": "bytes=-44"})
    assert r.status_code == 206 and r.content == plain[-44:]
    r = c.get(url, headers={"Range": f"bytes={len(plain)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(plain)}"
    # two plays from byte 0 are two entries; the later pieces are part of those plays
    new = entries(w.url, "audit.recording")[plays:]
    assert len(new) == 2 and {e.actor for e in new} == {"inspector"}
    assert all(e.subject == w.calls[label] for e in new)
    r = c.head(url)
    assert r.status_code == 200 and r.headers["content-length"] == str(len(plain)) and not r.content
    assert len(entries(w.url, "audit.recording")) == plays + 2  # a HEAD plays nothing
    r = c.get(url + "?download=1")
    assert r.content == plain and "attachment" in r.headers["content-disposition"]
    assert json.loads(entries(w.url, "audit.recording")[-1].details)["mode"] == "download"


def test_recording_never_written_in_clear(cw, as_user, tmp_path):
    """Playing the encrypted a2 leaves no plaintext copy anywhere under the recording dir."""
    w = cw.world
    c = as_user("inspector")
    plain = w.recordings["a2"].read_bytes()
    from pathlib import Path

    root = Path(w.settings.recording.dir)
    before = {p for p in root.rglob("*") if p.is_file()}
    assert c.get(f"/calls/{w.calls['a2']}/recording").content == plain
    after = {p for p in root.rglob("*") if p.is_file()}
    assert after == before
    stored = [p for p in after if "store" in p.parts and w.calls["a2"] in p.name or p.read_bytes() == plain]
    assert all(p.is_relative_to(root / "plain") for p in stored if p.read_bytes() == plain)


def test_no_recording_is_404(cw, as_user):
    c = as_user("inspector")
    assert c.get(f"/calls/{cw.world.calls['a3']}/recording").status_code == 404  # denied call
    assert c.get(f"/calls/{cw.world.calls['a7']}/recording").status_code == 404  # never finalized


# -- export, report --------------------------------------------------------------------------------

def test_export_bundle_verifies_offline(cw, as_user, tmp_path):
    c = as_user("inspector")
    token = csrf_of(c, "/calls")
    r = c.post("/export", data={"csrf_token": token, "tenant": "acme", "recording": "yes"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    path = tmp_path / "bundle.zip"
    path.write_bytes(r.content)
    result = verify_bundle(path)
    assert result.ok, result.problems
    assert result.receipt["actor"] == "inspector"
    assert result.manifest["counts"]["recordings"] == 4  # a1, a2, a6, o1
    assert result.manifest["filters"] == {"tenant": "acme", "has_recording": True}
    e = entries(cw.world.url, "audit.export")[-1]
    assert e.actor == "inspector" and e.seq == result.receipt["seq"]
    # streamed as it was made: no copy of the bundle anywhere under the recording dir or tmp_path
    assert not [p for p in tmp_path.rglob("*.zip") if p != path]
    assert not [p for p in tmp_path.rglob("*.part")]


def test_report_with_charts_and_formats(cw, as_user):
    c = as_user("acme-aud")
    r = c.get("/report/view?tenant=acme&from=2026-03-01&to=2026-03-31")
    assert r.status_code == 200 and "<svg" in r.text
    e = entries(cw.world.url, "report.generate")[-1]
    assert e.actor == "acme-aud" and e.subject == "acme"
    r = c.get("/report/view?tenant=acme&from=2026-03-01&to=2026-03-31&format=json")
    assert json.loads(r.text)["tenant"]["id"] == "acme"
    assert c.get("/report/view?tenant=acme&from=2026-03-31&to=2026-03-01").status_code == 400


# -- risk, registry (admin actions) ----------------------------------------------------------------

def test_risk_dashboard_and_suspend_resume(cw, as_user):
    w = cw.world
    admin = as_user("root")
    r = admin.get("/risk")
    assert 'id="risk-acme"' in r.text and 'id="risk-beta"' in r.text and "risk_suspend" in r.text
    assert admin.get("/risk?at=yesterday").status_code == 400
    r = admin.get("/risk?at=2026-03-02T12:30")
    assert r.status_code == 200 and "2026-03-02 12:30:00" in r.text
    token = csrf_of(admin, "/risk")
    r = admin.post("/risk/acme/status", data={"csrf_token": token, "action": "suspend", "reason": " "})
    assert r.status_code == 400
    r = admin.post("/risk/acme/status", data={"csrf_token": token, "action": "suspend", "reason": "complaint 12321"})
    assert r.status_code == 303
    with make_sessionmaker(make_engine(w.url))() as s:
        assert s.get(Tenant, "acme").status == "suspended"
    e = entries(w.url, "tenants.status")[-1]
    assert e.actor == "root" and json.loads(e.details)["reason"] == "complaint 12321"
    admin.post("/risk/acme/status", data={"csrf_token": token, "action": "resume", "reason": "fixed"})
    with make_sessionmaker(make_engine(w.url))() as s:
        assert s.get(Tenant, "acme").status == "active"
    auditor = as_user("inspector")
    t2 = csrf_of(auditor, "/risk")
    assert auditor.post("/risk/acme/status", data={"csrf_token": t2, "action": "suspend",
                                                   "reason": "x"}).status_code == 403


def test_registry_edit_is_validated_like_import(cw, as_user):
    w = cw.world
    admin = as_user("root")
    token = csrf_of(admin, "/registry")
    before = len(entries(w.url))
    bad = "trunks:\n  - {name: new-trunk, tenant: nobody, verified: false}\n"
    r = admin.post("/registry", data={"csrf_token": token, "document": bad})
    assert r.status_code == 400 and "trunks[0].tenant: unknown tenant" in r.text
    assert len(entries(w.url)) == before
    good = "trunks:\n  - {name: new-trunk, tenant: acme, carrier: China Telecom, verified: false}\n"
    r = admin.post("/registry", data={"csrf_token": token, "document": good, "dry_run": "1"})
    assert r.status_code == 200 and "new-trunk" not in r.text.split('id="registry-form"')[0]
    r = admin.post("/registry", data={"csrf_token": token, "document": good})
    assert r.status_code == 200 and "trunks.created 1" in r.text
    created = entries(w.url, "trunks.created")[-1]
    assert created.actor == "root" and created.subject == "new-trunk"
    assert entries(w.url, "web.registry_import")[-1].actor == "root"
    auditor = as_user("inspector")
    t2 = csrf_of(auditor, "/registry")
    assert auditor.post("/registry", data={"csrf_token": t2, "document": good}).status_code == 403
    assert 'id="registry-form"' not in auditor.get("/registry").text


def test_every_route_with_a_call_id_hides_other_tenants_calls(cw, as_user):
    """Enumerates the app's routes, so a route added later is covered too."""
    c = as_user("beta-aud")
    call_routes = [r.path for r in c.app.routes if isinstance(r, Route) and "{call_id}" in r.path]
    assert set(call_routes) >= {"/calls/{call_id}", "/calls/{call_id}/recording"}
    for path in call_routes:
        for label in ("a1", "a2", "a5", "o1"):  # acme's: plain and encrypted recording, a denial, observe
            assert c.get(path.replace("{call_id}", cw.world.calls[label])).status_code == 404, (path, label)
        assert c.get(path.replace("{call_id}", cw.world.calls["b1"])).status_code in (200, 404)
    assert c.get(f"/calls/{cw.world.calls['b1']}").status_code == 200  # its own call is shown


def test_abandoned_export_stops_without_a_receipt():
    from callwarden.web.routes.evidence import Aborted, PipeWriter

    pipe = PipeWriter(depth=1)
    pipe.write(b"x" * (1 << 20))  # fills the queue
    pipe.closed_by_reader.set()  # the browser went away
    with pytest.raises(Aborted):
        pipe.write(b"more")
    with pytest.raises(Aborted):
        pipe._buf += b"y"
        pipe.flush()  # queue full and no reader: gives up instead of waiting for ever
