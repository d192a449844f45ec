"""A small W3C WebDriver client for Debian's ``chromedriver`` driving
headless ``chromium``: start both, open pages, find and click elements,
type, read text and take screenshots. Synchronous (the browser tests run
the registry as a separate process, so no reactor is involved)."""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.clients.harness import ManagedProcess, free_port, require, wait_until

#: The flags every test browser starts with (no network beyond the page,
#: no first-run, no sandbox inside containers).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
]

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class WebDriverError(Exception):
    pass


class Browser:
    """One chromedriver process and one browser session with a new, empty profile."""

    def __init__(self, workdir: Path) -> None:
        chromium = require("chromium", "chromium")
        driver = require("chromedriver", "chromium-driver")
        workdir.mkdir(parents=True, exist_ok=True)
        profile = workdir / "profile"
        shutil.rmtree(profile, ignore_errors=True)
        profile.mkdir()
        self.port = free_port()
        self.process = ManagedProcess([driver, f"--port={self.port}"], workdir / "chromedriver.log")
        self.base = f"http://127.0.0.1:{self.port}"
        wait_until(self._ready, timeout=30, what="chromedriver", process=self.process)
        # Debian's /usr/bin/chromium is a wrapper script; the browser itself lives beside it.
        binary = "/usr/lib/chromium/chromium" if Path("/usr/lib/chromium/chromium").exists() else chromium
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": binary, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]},
                }
            }
        }
        try:
            self.session = self._call("POST", "/session", caps)["sessionId"]
        except BaseException:
            self.process.stop()
            raise

    def _ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status").get("ready"))
        except (OSError, WebDriverError):
            return False

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else (b"{}" if method == "POST" else None)
        request = urllib.request.Request(self.base + path, data=data, method=method, headers={"Content-Type": "application/json"})
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=60) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise WebDriverError(f"{method} {path}: {e.code} {e.read()[:2000]!r}") from None
        value = answer.get("value", answer)
        if "sessionId" in answer and isinstance(value, dict):
            value.setdefault("sessionId", answer["sessionId"])
        return value

    def _session(self, method: str, path: str, body: Any = None) -> Any:
        return self._call(method, f"/session/{self.session}{path}", body)

    # -- navigation and reading ---------------------------------------------------

    def go(self, url: str) -> None:
        self._session("POST", "/url", {"url": url})

    def back(self) -> None:
        self._session("POST", "/back")

    @property
    def url(self) -> str:
        return str(self._session("GET", "/url"))

    @property
    def title(self) -> str:
        return str(self._session("GET", "/title"))

    def source(self) -> str:
        return str(self._session("GET", "/source"))

    def find_all(self, css: str) -> list[str]:
        found = self._session("POST", "/elements", {"using": "css selector", "value": css})
        return [_element_id(e) for e in found]

    def find(self, css: str) -> str:
        found = self.find_all(css)
        if not found:
            raise AssertionError(f"no element matches {css!r} on {self.url}")
        return found[0]

    def text(self, element: str) -> str:
        return str(self._session("GET", f"/element/{element}/text"))

    def attribute(self, element: str, name: str) -> str | None:
        value = self._session("GET", f"/element/{element}/attribute/{name}")
        return None if value is None else str(value)

    def texts(self, css: str) -> list[str]:
        return [self.text(e) for e in self.find_all(css)]

    def click(self, element: str) -> None:
        self._session("POST", f"/element/{element}/click")

    def click_link(self, text: str) -> None:
        found = self._session("POST", "/elements", {"using": "link text", "value": text})
        if not found:
            raise AssertionError(f"no link {text!r} on {self.url}")
        self.click(_element_id(found[0]))

    def type(self, element: str, text: str) -> None:
        self._session("POST", f"/element/{element}/clear")
        self._session("POST", f"/element/{element}/value", {"text": text})

    def wait_for(self, css: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_all(css)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{css!r} did not appear on {self.url}")
            time.sleep(0.1)

    def alert_text(self) -> str | None:
        """The text of an open alert/confirm/prompt dialog; None when there is none."""
        try:
            return str(self._session("GET", "/alert/text"))
        except WebDriverError as e:
            if "no such alert" in str(e):
                return None
            raise

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._session("GET", "/screenshot")))
        return path

    def quit(self) -> None:
        try:
            self._session("DELETE", "")
        except (OSError, WebDriverError):
            pass
        self.process.stop()


def _element_id(reference: dict[str, str]) -> str:
    """The id in a W3C element reference (or chromedriver's legacy one)."""
    for key in (ELEMENT, "ELEMENT"):
        if key in reference:
            return reference[key]
    raise WebDriverError(f"not an element reference: {reference!r}")
