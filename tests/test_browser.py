"""End to end in a real browser: Playwright drives Debian's Chromium through the web page."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("FSN_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(index_dir):
    pytest.importorskip("fastapi")
    import uvicorn

    from fashionsearchnet.api import SearcherProvider, create_app

    provider = SearcherProvider(index_dir, watch_seconds=0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(create_app(provider, timeout=60), host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=10)
    provider.close()


@pytest.mark.browser
@pytest.mark.parametrize("width", [1280, 390])
def test_page_end_to_end(server, width, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"{CHROMIUM} not installed (Debian package chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server + "/")
        page.wait_for_selector("#catalog .card")
        assert "120 items" in page.inner_text("#status")
        # choose an item: the query view and the plain similarity results appear
        page.click('#catalog .card[data-id="syn000003"]')
        page.wait_for_selector("#results .card")
        assert page.is_visible("#query-view")
        first = page.inner_text("#results-info")
        # change an attribute of the whole item
        page.click("#add-edit")
        page.select_option("#edits .edit:nth-child(1) .edit-attr", "neckline")
        page.select_option("#edits .edit:nth-child(1) .edit-value", "v-neck")
        page.click("#search")
        page.wait_for_function("document.querySelector('#results-info').textContent.includes('neckline=v-neck')")
        # change the colour of one region only
        page.click("#add-region-edit")
        page.select_option("#edits .edit:nth-child(2) .edit-region", "sleeve")
        page.select_option("#edits .edit:nth-child(2) .edit-attr", "color")
        page.select_option("#edits .edit:nth-child(2) .edit-value", "red")
        page.click("#search")
        page.wait_for_function("document.querySelector('#results-info').textContent.includes('sleeve:color=red')")
        info = page.inner_text("#results-info")
        assert info != first and "neckline=v-neck" in info
        cards = page.query_selector_all("#results .card")
        assert len(cards) == 12
        assert page.query_selector_all("#results .card .sim .b i.changed")  # the changed blocks are highlighted
        page.select_option("#k", "24")
        page.wait_for_function("document.querySelectorAll('#results .card').length === 24")
        # a contradictory request shows the API's message on the page
        for i in (3, 4):
            page.click("#add-edit")
            page.select_option(f"#edits .edit:nth-child({i}) .edit-attr", "color")
        page.select_option("#edits .edit:nth-child(3) .edit-value", "red")
        page.select_option("#edits .edit:nth-child(4) .edit-value", "blue")
        page.click("#search")
        page.wait_for_selector("#error:not([hidden])")
        assert "contradictory edits" in page.inner_text("#error")
        page.click("#edits .edit:nth-child(4) button")
        page.wait_for_selector("#error", state="hidden")
        # the activation map of the chosen attribute loads
        page.select_option("#explain-attr", "sleeve_length")
        page.wait_for_function("document.querySelector('#explain-img').naturalWidth > 0")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"search-{width}px.png"), full_page=True)
        assert not errors, errors
        browser.close()
