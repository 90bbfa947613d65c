"""Headless Chromium for the dashboard tests: Debian's `chromium` and `chromium-driver`, installed here when
missing (as root), driven through selenium from async tests.

The hub under test serves from the test's own event loop, so every WebDriver call (each a blocking HTTP request
to chromedriver) runs in a worker thread; waits poll the page with a deadline and say what they waited for.
"""

import base64
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
DESKTOP = (1280, 900)
PHONE = (390, 844)
_APT_UPDATE_SECONDS = 300
_APT_INSTALL_SECONDS = 600
_STALE_RETRIES = 20
T = TypeVar("T")


def ensure_chromium() -> tuple[str, str]:
    """The paths of chromium and chromedriver, installing Debian's packages first when either is missing.

    Fails the calling test (never skips) when they are missing and cannot be installed.
    """
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if os.geteuid() != 0:
        pytest.fail("the dashboard tests need chromium and chromedriver: run "
                    "`apt-get install chromium chromium-driver` as root (or run the tests as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [(["apt-get", "update"], _APT_UPDATE_SECONDS),
             (["apt-get", "install", "-y", "chromium", "chromium-driver"], _APT_INSTALL_SECONDS)]
    for argv, seconds in steps:
        try:
            subprocess.run(argv, check=True, timeout=seconds, env=env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            pytest.fail(f"installing chromium for the dashboard tests failed: {' '.join(argv)} exited "
                        f"{exc.returncode}: {exc.stderr[-2000:]}")
        except (subprocess.TimeoutExpired, OSError) as exc:
            pytest.fail(f"installing chromium for the dashboard tests failed: {' '.join(argv)}: {exc}")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("apt-get installed chromium and chromium-driver, yet chromium or chromedriver is not on PATH")
    return chromium, driver


def start_chrome(chromium: str, chromedriver: str) -> webdriver.Chrome:
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-extensions", "--no-first-run", f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
                "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(10)
    return driver


# Text whose colour against its (composited) background falls short of WCAG AA: 4.5:1, or 3:1 for large text
# (24 px, or 18.66 px bold). Disabled controls are exempt, as WCAG says.
_CONTRAST_JS = """
const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
  const p = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3]));
const lum = (rgb) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * f(rgb[0]) + 0.7152 * f(rgb[1]) + 0.0722 * f(rgb[2]); };
const background = (el) => { const layers = [];
  for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor);
    if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
  return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255]); };
const failures = [];
for (const el of document.querySelectorAll('body *')) {
  if (!Array.from(el.childNodes).some((n) => n.nodeType === 3 && n.textContent.trim())) continue;
  const r = el.getBoundingClientRect(); const style = getComputedStyle(el);
  if (!r.width || !r.height || style.visibility === 'hidden') continue;
  if (el.closest('[disabled], [aria-disabled=true], svg, noscript')) continue;
  const bg = background(el); const fg = parse(style.color); if (!fg) continue;
  const a = lum(over(fg, bg)); const b = lum(bg);
  const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
  const size = parseFloat(style.fontSize); const bold = Number(style.fontWeight) >= 700;
  const need = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
  if (ratio < need) failures.push(`${el.tagName.toLowerCase()}.${el.className}: ${el.textContent.trim().slice(0, 30)}`
    + ` ${style.color} on rgb(${bg.map(Math.round)}) = ${ratio.toFixed(2)}`);
}
return failures;
"""


class Browser:
    """One Chromium tab, with async methods that leave the event loop free for the hub under test."""

    def __init__(self, driver: webdriver.Chrome) -> None:
        self.driver = driver

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(partial(fn, *args))

    async def open(self, url: str) -> None:
        await self._call(self.driver.get, url)

    async def reload(self) -> None:
        await self._call(self.driver.refresh)

    async def js(self, script: str, *args: Any) -> Any:
        return await self._call(self.driver.execute_script, script, *args)

    async def wait_for(self, script: str, *args: Any, seconds: float = 10, what: str = "the page") -> Any:
        """Evaluate `script` (a function body that returns a value) until it returns something truthy."""
        deadline = time.monotonic() + seconds
        value: Any = None
        while True:
            value = await self.js(script, *args)
            if value:
                return value
            if time.monotonic() >= deadline:
                break
            await anyio.sleep(0.05)
        name = "".join(c if c.isalnum() else "-" for c in what)[:60]
        await self.screenshot(f"failed-{name}")
        errors = await self.js("return Array.from(document.querySelectorAll('.error, .form-status'))"
                               ".map(e => e.textContent).filter(Boolean)")
        raise AssertionError(f"{what}: not within {seconds} s (last value {value!r}; messages on the page: {errors})")

    async def go(self, hash_route: str, heading: str) -> None:
        """Follow an in-page route and wait for its heading."""
        await self.js("location.hash = arguments[0]", hash_route)
        await self.wait_for("const h = document.querySelector('main h1');"
                            "return h && h.textContent.startsWith(arguments[0])", heading,
                            what=f"the page {hash_route} with heading {heading!r}")

    async def find(self, css: str) -> WebElement:
        await self.wait_for("return document.querySelector(arguments[0])", css, what=f"element {css}")
        return await self._call(self.driver.find_element, "css selector", css)

    async def _on(self, css: str, action: Callable[[WebElement], T]) -> T:
        """Run `action` on the element, finding it again if a live update replaced it meanwhile."""
        for _ in range(_STALE_RETRIES):
            element = await self.find(css)
            try:
                return await self._call(action, element)
            except StaleElementReferenceException:
                await anyio.sleep(0.05)
        raise AssertionError(f"element {css} kept being replaced")

    async def click(self, css: str) -> None:
        await self._on(css, lambda e: e.click())

    async def fill(self, css: str, text: str) -> None:
        def fill(element: WebElement) -> None:
            element.clear()
            element.send_keys(text)

        await self._on(css, fill)

    async def fill_form(self, form: str, values: dict[str, str]) -> None:
        """Type each value into the field of that name (an input or a textarea) in the form `form`."""
        for name, text in values.items():
            await self.fill(f"{form} [name={name}]", text)

    async def choose(self, css: str, value: str) -> None:
        await self._on(css, lambda e: Select(e).select_by_value(value))

    async def text(self, css: str) -> str:
        """The element's visible text."""
        value: str = await self._on(css, lambda e: e.text)
        return value

    async def count(self, css: str) -> int:
        n: int = await self.js("return document.querySelectorAll(arguments[0]).length", css)
        return n

    async def contrast_failures(self) -> list[str]:
        """Visible text on the page below WCAG AA contrast against its background."""
        failures: list[str] = await self.js(_CONTRAST_JS)
        return failures

    async def tab_through(self, presses: int) -> list[dict[str, str]]:
        """Press Tab `presses` times (from the top on a freshly loaded page); for each stop, the focused element's
        tag, text or name, and its outline (what makes focus visible)."""
        stops: list[dict[str, str]] = []
        for _ in range(presses):
            await self._call(lambda: ActionChains(self.driver).send_keys(Keys.TAB).perform())
            stops.append(await self.js(
                "const e = document.activeElement; const s = getComputedStyle(e);"
                "return {tag: e.tagName.toLowerCase(), label: (e.getAttribute('aria-label') || e.textContent ||"
                " e.name || '').trim().slice(0, 40), href: e.getAttribute('href') || '',"
                " outline: `${s.outlineStyle} ${s.outlineWidth}`}"))
        return stops

    async def sign_in(self, url: str, token: str) -> None:
        """Open the dashboard, paste the token, and wait until its event stream is live."""
        await self.open(url + "/")
        await self.fill("#signin-form input[name=token]", token)
        await self.click("#signin-form button[type=submit]")
        await self.wait_live()

    async def wait_live(self) -> None:
        await self.wait_for("const s = document.getElementById('stream-status');"
                            "return s && s.dataset.state === 'live'", what="the event stream connected")

    async def resize(self, width: int, height: int, *, mobile: bool = False) -> None:
        await self._call(self.driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    async def reset(self) -> None:
        """Back to a desktop-sized blank tab (each test's hub has its own origin, so its own sessionStorage)."""
        await self._call(self.driver.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})
        await self.open("about:blank")

    async def screenshot(self, name: str) -> Path:
        """The whole page (up to 4000 CSS px tall) as `test-artifacts/dashboard/<name>.png`."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        try:
            await self._call(self._save_full_page, path)
        except WebDriverException:  # a screenshot is an aid, never the reason a test fails
            pass
        return path

    def _save_full_page(self, path: Path) -> None:
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))

    def console_errors(self) -> list[str]:
        """Severe messages from the page's console since the last call, less failed requests the page handles
        (a refused token, a stream cut by the hub stopping)."""
        entries = self.driver.get_log("browser")
        return [e["message"] for e in entries if e["level"] == "SEVERE" and "Failed to load resource" not in
                e["message"]]
