"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

One server and one browser for the module, a handful of flows: sign in, change SIP code 486's
recall time, see the preview, save with a comment, see the new version first in the rules history
with its author; a built-in code's locked fields; the warning before a new code; inactive codes
hidden, then shown. Each page's screenshot is saved to ``build/screenshots/<page>.png``.

Without /usr/bin/chromium the module is skipped, except on CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tests.api.conftest import TOKENS, Server, start_server, write_tokens
from tests.console.conftest import store_calls
from tests.workers import ROOT
from worker.domain.rules import load_rules
from worker.store.database import upgrade

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "build" / "screenshots"

if not CHROMIUM.exists():
    reason = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright  # noqa: E402

#: The operator's rules file: a custom code, inactive (hidden until asked for).
RULES = """
[[sip_codes]]
code = 499
description = "Carrier special (retired)"
active = false
recall = true
recall_after = { hours = 1 }
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``recall serve`` on SQLite (yesterday's call results stored) with the tests' tokens."""
    home = tmp_path_factory.mktemp("console")
    url = f"sqlite:///{home / 'recall.db'}"
    upgrade(url)
    rules_file = home / "rules.toml"
    rules_file.write_text(RULES)
    engine = create_engine(url)
    store_calls(engine, load_rules(rules_file))
    engine.dispose()
    env = {
        "RECALL_HOME": str(home / "home"),
        "RECALL_DATABASE_URL": url,
        "RECALL_API_TOKENS": str(write_tokens(home / "tokens.toml")),
        "RECALL_RULES": str(rules_file),
    }
    server = start_server(env, home / "serve.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A fresh browser context (no cookies), signed in as the editor."""
    context = browser.new_context(base_url=server.url, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.goto("/")
    expect(tab).to_have_url(f"{server.url}/console/login")
    tab.get_by_label("API token").fill(TOKENS["editor"])
    tab.get_by_role("button", name="Sign in").click()
    expect(tab).to_have_url(f"{server.url}/console/sip-codes")
    yield tab
    context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_sign_in_page(browser: Browser, server: Server) -> None:
    context = browser.new_context(base_url=server.url)
    tab = context.new_page()
    tab.goto("/console/login")
    shot(tab, "login")
    tab.get_by_label("API token").fill("not-a-token")
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.locator("#login-error")).to_have_text("That token is not valid.")
    tab.get_by_label("API token").fill(TOKENS["dialer"])
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.locator("#login-error")).to_contain_text("it is for the API only")
    context.close()


def test_change_a_recall_time_preview_and_save(page: Page) -> None:
    shot(page, "sip_codes")
    page.get_by_role("link", name="486", exact=True).click()
    expect(page.locator("#settings-heading")).to_have_text("SIP code 486")
    expect(page.locator("#sip-486")).to_have_class("selected")
    shot(page, "sip_code_486")
    page.locator("#sip-form").get_by_label("Minutes").fill("7")
    page.get_by_role("button", name="Preview the change").click()
    expect(page.get_by_role("heading", name="Preview the change")).to_be_visible()
    expect(page.locator("#preview-diff")).to_contain_text("recall_after")
    expect(page.locator("#preview-diff")).to_contain_text("{ minutes = 7 }")
    expect(page.locator("#preview-summary")).to_contain_text("call results")
    expect(page.locator("#differing")).to_contain_text("Decisions that change")
    shot(page, "preview")
    page.get_by_label("Comment").fill("busy lines sooner")
    page.get_by_role("button", name="Save as the rules in force").click()
    expect(page).to_have_url(page.url.split("/console/")[0] + "/console/rules")
    newest = page.locator("#rules-history tbody tr").first
    expect(newest).to_contain_text("busy lines sooner")
    expect(newest).to_contain_text("editor")
    expect(newest).to_contain_text("console")
    # The rules file is now another version than the one in force: said on every page.
    expect(page.locator("#rules-file-differs")).to_contain_text("not the version in force")
    shot(page, "rules_history")
    page.get_by_role("link", name="SIP Codes").click()
    expect(page.locator("#sip-486")).to_contain_text("7")


def test_a_built_in_codes_code_and_active_flag_are_locked(page: Page) -> None:
    page.goto("/console/sip-codes?code=404")
    expect(page.locator("#locked-note")).to_be_visible()
    for field in ("#code", "#active"):
        expect(page.locator(field)).to_be_disabled()
        assert not page.locator(field).is_editable()
    expect(page.locator("#description")).to_be_enabled()
    expect(page.locator("#recall")).to_be_enabled()


def test_a_new_code_is_confirmed_twice(page: Page) -> None:
    asked: list[str] = []

    def answer(dialog: Dialog) -> None:  # the first time Cancel, then OK
        asked.append(dialog.message)
        if len(asked) == 1:
            dialog.dismiss()
        else:
            dialog.accept()

    page.on("dialog", answer)
    form = page.locator("#new-sip-form")
    form.get_by_label("Code").fill("497")
    form.get_by_label("Description").fill("Carrier test")
    form.get_by_role("button", name="Create").click()
    assert len(asked) == 1
    assert "Create a new SIP code?" in asked[0]
    expect(page.get_by_role("heading", name="SIP Codes")).to_be_visible()  # dismissed: stays
    form.get_by_role("button", name="Create").click()
    expect(page.locator("#new-code-warning")).to_contain_text("the new SIP code 497")
    shot(page, "new_code_warning")
    page.get_by_role("button", name="Yes, preview the new SIP code").click()
    expect(page.locator("#preview-diff")).to_contain_text("added")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("#sip-497")).to_have_count(0)  # nothing saved


def test_inactive_codes_hidden_then_shown(page: Page) -> None:
    expect(page.locator("#sip-499")).to_have_count(0)
    page.get_by_role("link", name="Show inactive codes").click()
    expect(page.locator("#sip-499")).to_contain_text("Carrier special (retired)")
    shot(page, "sip_codes_inactive")
    page.get_by_role("link", name="Hide inactive codes").click()
    expect(page.locator("#sip-499")).to_have_count(0)


def test_every_other_page(page: Page) -> None:
    pages = {
        "outcomes": ("Outcome Codes", "/console/outcomes?code=SYSANSMACH"),
        "plans": ("Plans", "/console/plans?plan=default"),
        "phone_history": ("Phone history", "/console/phones?phone_id=P1"),
        "dead_letters": ("Dead letters", "/console/dead-letters"),
    }
    for name, (heading, path) in pages.items():
        page.goto(path)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.locator("#version-in-force")).not_to_be_empty()
        shot(page, name)
    page.goto("/console/phones?phone_id=P1")
    expect(page.locator("#phone-decisions")).to_contain_text("SIP 486")
