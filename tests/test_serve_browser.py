"""The page in a real browser: headless Chromium (Debian's, driven by Playwright) opens the page
served with the tiny model, plays a generated clip, and the commentary panel receives one entry per
window; the run saves a screenshot."""

import shutil
import subprocess

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (make test installs Debian's chromium)")
def test_the_page_shows_one_commentary_entry_per_window(processor, tmp_path):
    from test_serve import Server

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg not installed (make setup installs it)")
    clip = tmp_path / "moving.webm"  # VP8 in WebM, 12 s: every Chromium build plays it
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=112x112:rate=10", "-t", "12",
                    "-c:v", "libvpx", "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=120)
    with Server(processor, tmp_path) as server, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1200, "height": 640})
        page.goto(server.url)
        page.set_input_files("#file", str(clip))
        page.fill("#query", "Describe the shapes.")
        page.click("#start")
        page.wait_for_function("document.querySelectorAll('#commentary .entry').length >= 3", timeout=90_000)
        entries = page.locator("#commentary .entry .time").all_inner_texts()
        page.screenshot(path=str(tmp_path / "livecc-serve.png"))
        browser.close()
    assert entries[:3] == ["[0.0-3.0s]", "[3.0-4.0s]", "[4.0-5.0s]"]
    assert (tmp_path / "livecc-serve.png").stat().st_size > 10_000
