"""The page in a real browser: headless Chromium (Debian's, driven by Playwright) opens the page
served with the tiny model and streams a generated clip: from the browser (one commentary entry
per window, a question answered and marked, "ended" at the end, a screenshot), through a server
with an API key (the key typed into the page), and from a URL the server reads (no entry twice
after the end)."""

import contextlib
import functools
import http.server
import shutil
import subprocess
import threading
import time

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="Chromium is not installed (make test installs Debian's chromium)")


def moving_clip(folder):
    """VP8 in WebM, 8 s: every Chromium build plays it."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed (make setup installs it)")
    path = folder / "moving.webm"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=112x112:rate=10", "-t", "8",
                    "-c:v", "libvpx", "-pix_fmt", "yuv420p", str(path)], check=True, timeout=120)
    return path


@contextlib.contextmanager
def chromium():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return moving_clip(tmp_path_factory.mktemp("page"))


@pytest.fixture
def browser():
    with chromium() as browser:
        yield browser


def entries(page):
    return page.locator("#commentary .entry").all_inner_texts()


def test_the_page_comments_each_window_answers_a_question_and_ends(processor, tmp_path, clip, browser):
    from test_serve import Server

    with Server(processor, tmp_path) as server:
        page_streams_a_clip(browser, server.url, clip, tmp_path)


def page_streams_a_clip(browser, url, clip, tmp_path):
    """The page at ``url`` streams ``clip`` from the browser: an entry per window at its times, a
    question answered and marked, "ended" at the end, and a screenshot of it all."""
    page = browser.new_page(viewport={"width": 1200, "height": 640})
    page.goto(url)
    page.set_input_files("#file", str(clip))
    page.fill("#query", "Describe the shapes.")
    page.click("#start")
    page.wait_for_function("document.querySelectorAll('#commentary .entry').length >= 1", timeout=90_000)
    page.fill("#question", "What colour is it?")
    page.press("#question", "Enter")
    page.wait_for_function("document.querySelector('#commentary .answer') !== null", timeout=90_000)
    page.wait_for_function("document.getElementById('status').textContent.startsWith('ended')", timeout=90_000)
    page.screenshot(path=str(tmp_path / "livecc-serve.png"))
    times = page.locator("#commentary .entry .time").all_inner_texts()
    questions = page.locator("#commentary .question").all_inner_texts()
    assert times[:3] == ["[0.0-3.0s]", "[3.0-4.0s]", "[4.0-5.0s]"]
    assert questions == ["Q: What colour is it?"]
    assert (tmp_path / "livecc-serve.png").stat().st_size > 10_000


def test_a_server_with_a_key_takes_it_from_the_page(processor, tmp_path, clip, browser):
    from test_serve import Server

    with Server(processor, tmp_path, api_key="s3cret") as server:
        page = browser.new_page()
        page.goto(server.url)
        page.set_input_files("#file", str(clip))
        page.click("#start")
        page.wait_for_function("document.getElementById('status').textContent.includes('API key')", timeout=30_000)
        page.fill("#key", "s3cret")
        page.dispatch_event("#key", "change")
        page.click("#start")
        page.wait_for_function("document.querySelectorAll('#commentary .entry').length >= 2", timeout=90_000)
        reopened = browser.new_page()
        reopened.goto(f"{server.url}/?key=s3cret")  # the documented way in
        assert reopened.input_value("#key") == "s3cret"


def test_a_url_read_by_the_server_is_said_once(processor, tmp_path, clip, browser):
    from test_serve import Server, free_port

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        with Server(processor, tmp_path, allow_private=True) as server:
            page = browser.new_page()
            page.goto(server.url)
            page.fill("#url", f"http://127.0.0.1:{files.server_address[1]}/{clip.name}")
            page.click("#start")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('ended')",
                                   timeout=90_000)
            said = entries(page)
            time.sleep(6)  # longer than an EventSource waits to reconnect
            assert entries(page) == said and len(said) == 6  # 8 s: windows of 3 s and five of 1 s
    finally:
        files.shutdown()
