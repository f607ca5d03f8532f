"""The dashboard in a real headless Chromium (Debian's chromium and chromedriver, via Selenium)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from testkit.servers.digits import digits_models, tampered_copy
from testkit.servers.fake_oip import FakeOip, torch_model
from testkit.servers.monitor_kit import MonitorProcess, pool_files, run_once, write_config
from testkit.servers.processes import free_port
from testkit.servers.required import missing

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM and DRIVER):
        msg = "Chromium or its driver is not installed: apt-get install chromium chromium-driver (scripts/setup.sh)"
        missing(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="veriprint-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_in_a_real_browser(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    path, pub, _ = pool_files()
    m = digits_models()
    fake = FakeOip({"good": torch_model(m.model), "bad": torch_model(tampered_copy(m.model, 4))}, (1, 8, 8))
    cfg = write_config(
        tmp_path / "monitor.toml", database=f"sqlite:///{tmp_path / 'm.db'}",
        defaults={"fingerprint": path, "pubkey": pub, "interval": "1h", "spec": "probs", "pairs_per_check": 2,
                  "pool_warn_checks": 10},
        endpoints=[{"name": "good", "target": fake.url("good")}, {"name": "bad", "target": fake.url("bad")},
                   {"name": "down", "target": f"http://127.0.0.1:{free_port()}/v2/models/x",
                    "options": {"retries": 0}}])
    try:
        r = run_once(cfg)
    finally:
        fake.close()
    assert r.returncode == 1, r.stdout + r.stderr
    proc = MonitorProcess(cfg, free_port(), tmp_path / "monitor.log", "--serve-only").start()
    base = f"http://127.0.0.1:{proc.port}"
    try:
        browser.get(base + "/")
        rows = {e.get_attribute("data-endpoint"): e.get_attribute("data-verdict")
                for e in browser.find_elements(By.CSS_SELECTOR, "tr.endpoint")}
        assert rows == {"good": "INTACT", "bad": "TAMPERED", "down": "INCONCLUSIVE"}
        assert browser.find_elements(By.CSS_SELECTOR, ".pool-warning")  # 5 checks left < 10
        browser.save_screenshot(str(tmp_path / "index.png"))
        browser.find_element(By.LINK_TEXT, "bad").click()
        assert browser.find_element(By.ID, "state").text == "TAMPERED"
        bars = browser.find_elements(By.CSS_SELECTOR, "svg.timeline rect.bar")
        assert [b.get_attribute("data-verdict") for b in bars] == ["TAMPERED"]
        browser.find_element(By.CSS_SELECTOR, "#checks tr.check a").click()
        assert browser.find_element(By.ID, "verdict").text == "TAMPERED"
        flipped = browser.find_elements(By.CSS_SELECTOR, "#samples tr.sample.flipped")
        assert flipped and all("differs" in f.text or "label flipped" in f.text for f in flipped)
        imgs = browser.find_elements(By.CSS_SELECTOR, "#samples img")
        assert len(imgs) == 2 * len(browser.find_elements(By.CSS_SELECTOR, "#samples tr.sample")) == 8
        # the images really loaded and decoded in the browser
        widths = browser.execute_script(
            "return Array.from(document.querySelectorAll('#samples img')).map(i => i.complete ? i.naturalWidth : -1)")
        assert widths == [64] * 8
        browser.save_screenshot(str(tmp_path / "check.png"))
        browser.get(base + "/endpoints/down")
        assert "Connection refused" in browser.page_source or "connection failed" in browser.page_source
        assert browser.find_element(By.ID, "state").text == "INCONCLUSIVE"
    finally:
        assert proc.stop() == 0, proc.tail()
