"""tests/browser.py: the headless-Chromium helper the report test relies on catches what it should."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from tests import browser

PNG = Image.new("RGB", (24, 16), (200, 40, 40))
_buffer = io.BytesIO()
PNG.save(_buffer, "PNG")
PNG_URL = "data:image/png;base64," + base64.b64encode(_buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def chromium():
    with browser.launch() as launched:
        yield launched


def page(tmp_path: Path, body: str, name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8">'
                    f'<meta name="viewport" content="width=device-width"></head><body>{body}</body></html>')
    return path


CLEAN = f"""
<h1>Report</h1>
<svg class="chart" width="400" height="200" viewBox="0 0 400 200" style="max-width: 100%; height: auto">
  <rect x="10" y="40" width="80" height="160" fill="steelblue"/>
  <rect x="110" y="90" width="80" height="110" fill="orange"/>
  <text x="10" y="20">accuracy</text>
</svg>
<img class="sample" src="{PNG_URL}" width="96" height="64" alt="sample">
<div style="height: 1500px; border-bottom: 4px solid green">taller than the viewport</div>
"""


def test_clean_page_renders_with_screenshot(chromium, tmp_path):
    shot = browser.artifact_path("test_browser/clean.png")
    shot.unlink(missing_ok=True)
    with browser.render(chromium, page(tmp_path, CLEAN), shot) as shown:
        assert shown.page.locator("svg.chart rect").count() == 2
        assert shown.page.locator("img.sample").evaluate("i => [i.complete, i.naturalWidth]") == [True, 24]
        assert shown.page.evaluate("innerWidth") == 1280
    assert shown.errors == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 2000
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 1500  # the full page, not just the viewport
        assert image.convert("RGB").getpixel((60, 200)) != (255, 255, 255)  # the first bar was painted


def test_phone_viewport(chromium, tmp_path):
    with browser.render(chromium, page(tmp_path, CLEAN), viewport=browser.PHONE) as shown:
        assert shown.page.evaluate("innerWidth") == 390  # a wider page would zoom out to fit (408 without max-width)
        assert shown.errors == []


def test_uncaught_exception_is_a_page_error(chromium, tmp_path):
    with browser.render(chromium, page(tmp_path, '<script>throw new Error("boom")</script>')) as shown:
        pass
    assert len(shown.page_errors) == 1 and "boom" in shown.page_errors[0]
    assert shown.errors


def test_console_error_is_recorded(chromium, tmp_path):
    with browser.render(chromium, page(tmp_path, '<script>console.error("bad data", 42)</script>')) as shown:
        pass
    assert shown.console_errors and "bad data 42" in shown.console_errors[0]
    assert shown.page_errors == []


def test_cdn_request_is_blocked(chromium, tmp_path):
    body = '<script src="https://cdn.example.com/x.js"></script><p>offline</p>'
    with browser.render(chromium, page(tmp_path, body)) as shown:
        assert shown.page.locator("p").inner_text() == "offline"
    assert shown.requests_blocked == ["https://cdn.example.com/x.js"]
    assert shown.failed_loads == []  # counted once, as blocked
    assert shown.errors == ["blocked request: https://cdn.example.com/x.js"]  # not again as a console error


def test_missing_file_or_corrupt_image_is_a_failed_load(chromium, tmp_path):
    body = ('<link rel="stylesheet" href="missing.css"><img src="missing.png" alt="gone">'
            '<img src="data:image/png;base64,AAAA" alt="corrupt">')
    with browser.render(chromium, page(tmp_path, body)) as shown:
        pass
    assert sorted(shown.failed_loads) == [
        "data:image/png;base64,AAAA: image did not decode",
        f"{(tmp_path / 'missing.css').as_uri()}: net::ERR_FILE_NOT_FOUND",
        f"{(tmp_path / 'missing.png').as_uri()}: net::ERR_FILE_NOT_FOUND"]
    assert shown.requests_blocked == []
    assert len(shown.errors) == 3, shown.errors  # Chromium's own console line for each is not counted twice


def test_missing_chromium_fails_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(pytest.fail.Exception, match="run `make test`, which installs Debian's chromium"):
        with browser.launch():
            pass


def test_artifact_path_follows_the_environment(monkeypatch, tmp_path):
    assert browser.artifact_path("a.png") == browser.REPO / "build" / "test-artifacts" / "a.png"
    monkeypatch.setenv("EDGEPIPE_TEST_ARTIFACTS", str(tmp_path / "kept"))
    assert browser.artifact_path("sub/b.png") == tmp_path / "kept" / "sub" / "b.png"
    assert (tmp_path / "kept" / "sub").is_dir()
