"""End to end in a real browser: Debian's chromium, headless, driven by Playwright, against a
console started by the test as its own process (``callwarden web``) on localhost.

Runs on SQLite and PostgreSQL. Screenshots of every page go to tests/web/output/<backend>/
(or $CALLWARDEN_TEST_OUTPUT/<backend>/); they are test output, ignored by git.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from callwarden.audit.verify_bundle import verify_bundle
from tests.audit.world import build_world
from tests.conftest import ROOT
from tests.web.conftest import PASSWORDS, add_accounts, web_config

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
OUTPUT = Path(os.environ.get("CALLWARDEN_TEST_OUTPUT") or ROOT / "tests" / "web" / "output")

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def console(seeded_url, make_settings, tmp_path) -> Iterator[dict]:
    """A populated store (SQLite, PostgreSQL) and ``callwarden web`` serving it on a free
    loopback port."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing (CI installs it: apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} missing (apt-get install -y chromium)")
    world = build_world(seeded_url, make_settings, tmp_path)
    add_accounts(seeded_url)
    port = _free_port()
    cfg = tmp_path / "callwarden.yaml"
    cfg.write_text(yaml.safe_dump(web_config(world, tmp_path, port)), encoding="utf-8")
    log = open(tmp_path / "console.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "callwarden.cli.main", "--config", str(cfg), "web"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/login", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            pytest.fail("console did not start: " + (tmp_path / "console.log").read_text())
        time.sleep(0.2)
    try:
        yield {"base": base, "world": world, "config": cfg, "tmp": tmp_path,
               "backend": "postgresql" if seeded_url.startswith("postgresql") else "sqlite"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def shot(page, console: dict, name: str) -> None:
    """``tests/web/output/<backend>/<name>.png``."""
    out = OUTPUT / console["backend"]
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def sign_in(page, base: str, user: str) -> None:
    page.goto(base + "/calls")
    assert "/login" in page.url
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORDS[user])
    page.click("#login-submit")
    page.wait_for_url(base + "/calls")


PLAY = """() => new Promise((resolve, reject) => {
  const a = document.getElementById('player');
  const t = setTimeout(() => reject('no ended event within 20 s'), 20000);
  a.addEventListener('ended', () => { clearTimeout(t); resolve({ended: a.ended, duration: a.duration}); });
  a.addEventListener('error', () => reject('media error ' + (a.error && a.error.code)));
  a.currentTime = 0;
  a.play().catch(e => reject(String(e)));
})"""


def test_auditor_journey(console, browser, tmp_path):
    base, world = console["base"], console["world"]
    ctx = browser.new_context(accept_downloads=True, locale="zh-CN")
    page = ctx.new_page()
    page.goto(base + "/login")
    shot(page, console, "01-login")
    sign_in(page, base, "inspector")

    # search: the same filters as `audit search`, numbers masked
    page.select_option("select[name=tenant]", "acme")
    page.select_option("select[name=recording]", "yes")
    page.click("#search-submit")
    page.wait_for_selector("#results")
    shot(page, console, "02-search")
    text = page.inner_text("#results")
    assert world.calls["a1"] in text and world.calls["b1"] not in text
    assert "138****8000" in text and "13800138000" not in text

    # open a call and play its recording to the end (plain a1, then encrypted a2)
    for label in ("a1", "a2"):
        page.goto(f"{base}/calls?tenant=acme&recording=yes")
        page.click(f"a.call-link:text('{world.calls[label]}')")
        page.wait_for_selector("#player")
        result = page.evaluate(PLAY)
        assert result["ended"] is True and result["duration"] > 0.4
        shot(page, console, f"03-call-{label}")
    assert "FREQUENCY_EXCEEDED" not in page.inner_text("#reasons")

    # a denied call: every reason with its clause and both messages
    page.goto(f"{base}/calls/{world.calls['a5']}")
    reasons = page.inner_text("#reasons")
    assert "CALLEE_REFUSED" in reasons and "§1(2)" in reasons and "被叫用户已谢绝来电" in reasons
    shot(page, console, "04-call-denied")

    # export the current filter and verify the bundle offline, as the CLI does
    page.goto(f"{base}/calls?tenant=acme")
    with page.expect_download() as dl:
        page.click("#export-submit")
    bundle = tmp_path / "bundle.zip"
    dl.value.save_as(bundle)
    result = verify_bundle(bundle)
    assert result.ok, result.problems
    assert result.receipt["actor"] == "inspector" and result.manifest["counts"]["calls"] == 9
    cli = subprocess.run([sys.executable, "-m", "callwarden.cli.main", "audit", "verify", str(bundle)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0 and cli.stdout.startswith("OK "), cli.stdout + cli.stderr

    # report with charts, risk dashboard, registry
    page.goto(base + "/report")
    shot(page, console, "05-report-form")
    page.fill("input[name=from]", "2026-03-01")
    page.fill("input[name=to]", "2026-03-31")
    page.click("#report-submit")
    page.wait_for_selector("svg")
    shot(page, console, "06-report")
    page.goto(base + "/risk?at=2026-03-02T10:30")
    assert page.is_visible("#risk-acme") and page.is_visible("#risk-beta")
    assert page.inner_text("#risk-beta td:nth-child(5)") == "1"  # b1, in the hour before
    shot(page, console, "07-risk")
    page.goto(base + "/registry")
    assert "ct-trunk-1" in page.inner_text("#table-trunks")
    shot(page, console, "08-registry")

    # English on request
    page.click("#lang")
    assert page.inner_text("h1") == "Registry"
    ctx.close()


def test_tenant_auditor_denied_another_tenants_call(console, browser):
    base, world = console["base"], console["world"]
    ctx = browser.new_context()
    page = ctx.new_page()
    sign_in(page, base, "beta-aud")
    assert world.calls["b1"] in page.inner_text("#results")
    assert world.calls["a1"] not in page.content()
    for path in (f"/calls/{world.calls['a1']}", f"/calls/{world.calls['a1']}/recording"):
        resp = page.goto(base + path)
        assert resp.status == 404
        assert "13800138000" not in page.content() and "138****8000" not in page.content()
    shot(page, console, "09-tenant-denied")
    ctx.close()


def test_post_without_csrf_token_is_refused(console, browser):
    base = console["base"]
    ctx = browser.new_context()
    page = ctx.new_page()
    sign_in(page, base, "root")
    page.goto(base + "/risk")
    # a form like the page's own, but without the token: the browser sends the session cookie
    with page.expect_navigation():
        page.evaluate("""() => {
          const f = document.createElement('form');
          f.method = 'post'; f.action = '/risk/acme/status';
          for (const [k, v] of [['action', 'suspend'], ['reason', 'forged']]) {
            const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i);
          }
          document.body.appendChild(f); f.submit();
        }""")
    assert "403" in page.inner_text("h1")
    shot(page, console, "10-csrf-refused")
    r = ctx.request.post(base + "/registry", form={"document": "tenants: []"})
    assert r.status == 403
    page.goto(base + "/risk")
    assert "active" in page.inner_text("#tenant-actions")  # acme was not suspended
    ctx.close()
