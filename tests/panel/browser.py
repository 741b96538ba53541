"""Debian's Chromium driven by Selenium through Debian's chromedriver (the same version, both
from apt: nothing is downloaded), headless, and what the tests check on every page."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: screenshots of every page, kept after the run (ignored by git)
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "panel"


def cjk_font() -> bool:
    out = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, check=False)
    return bool(out.stdout.strip())


@contextmanager
def chromium() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900",
                "--disable-dev-shm-usage", "--lang=zh-CN"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, within: float = 30.0) -> WebDriverWait:  # type: ignore[type-arg]
    return WebDriverWait(driver, within)


def log_in(driver: WebDriver, base: str, user: str, password: str) -> None:
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login").click()
    wait(driver).until(ec.presence_of_element_located((By.ID, "whoami")))


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def png_size_and_colours(png: bytes) -> tuple[int, int, int]:
    """Width, height and the number of distinct pixel byte values of a PNG (enough to tell a
    blank page from a drawn one, with nothing but zlib)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        chunk = png[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw = zlib.decompress(idat)
    return width, height, len(set(raw[:: max(1, len(raw) // 200_000)]))


def screenshot(driver: WebDriver, tmp: Path, name: str, *, visible: tuple[str, ...]) -> Path:
    """Save the page as a PNG in the test's temp dir and in artifacts/panel/, and check it: a
    page that is drawn (not blank), its key elements displayed, no console error."""
    for element_id in visible:
        element = driver.find_element(By.ID, element_id)
        assert element.is_displayed(), f"{name}: #{element_id} is not visible"
    path = tmp / f"{name}.png"
    png = driver.get_screenshot_as_png()
    path.write_bytes(png)
    width, height, colours = png_size_and_colours(png)
    assert width >= 1000, (width, height)
    assert height >= 600, (width, height)
    assert colours > 20, f"{name}: the screenshot looks blank ({colours} distinct values)"
    errors = console_errors(driver)
    assert not errors, f"{name}: console errors {errors}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / path.name)
    return path
