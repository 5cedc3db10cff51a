"""The dashboard in a real browser (Debian's headless Chromium driven by Selenium) against the
compose lab: a device's progress bar moves during its update, a killed device goes offline and
comes back, and a rollout started from the page reaches the fleet. And against a local server
whose registry holds a fleet bigger than a page (no Docker): the table pages, filters and
counts, and a live change redraws only its own row. Screenshots of each step are saved under
test-artifacts/screenshots/."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fotalab.protocol import State
from fotalab.server.registry import Registry

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = os.environ.get("FOTA_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("FOTA_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")


def browser_problem() -> str | None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        return f"{', '.join(missing)} not installed: apt-get install chromium chromium-driver (scripts/test does)"
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed: pip install -e '.[test]' (scripts/test does)"
    return None


@contextmanager
def headless_chromium(*arguments: str) -> Iterator[object]:
    """Headless Chromium at 1400x1000, driven through Debian's chromedriver (never downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"             # Selenium Manager must not try to fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
                     *arguments):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def chromium(require) -> Iterator[object]:
    require(browser_problem())
    with headless_chromium() as driver:
        yield driver


def spki_pin(certificate_pem: str) -> str:
    """Chromium's pin of a certificate: base64 of the SHA-256 of its public key (SPKI, DER)."""
    key = x509.load_pem_x509_certificate(certificate_pem.encode()).public_key()
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def lab_chromium(require, compose_lab) -> Iterator[object]:
    """Chromium that trusts the lab's front door: its certificate's key pinned, as a user accepts the
    lab CA's certificate once (Chromium has no option to add an authority; the pin admits this key only)."""
    require(browser_problem())
    pin = spki_pin(compose_lab.read_file("frontdoor", "/credentials/fota-frontdoor/cert.pem"))
    with headless_chromium(f"--ignore-certificate-errors-spki-list={pin}") as driver:
        yield driver


@pytest.fixture
def dashboard(server_url, lab_chromium, call_failed, request):
    """The browser on the lab's dashboard over HTTPS, read-only (no token); a screenshot is saved if the test fails."""
    lab_chromium.get(f"{server_url}/")
    lab_chromium.execute_script("localStorage.clear()")
    lab_chromium.refresh()
    wait_until(lab_chromium, lambda d: d.find_element("css selector", "body").get_attribute("data-live") == "connected",
               30, "the dashboard's live stream connected")
    yield lab_chromium
    if call_failed():
        lab_chromium.save_screenshot(str(SCREENSHOTS / f"failed-{request.node.name}.png"))


def wait_until(driver, check: Callable[[object], object], timeout: float, what: str):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(WebDriverException,)
                             ).until(check)
    except WebDriverException as exc:
        raise AssertionError(f"{what}: not seen within {timeout:.0f} s") from exc


def cell(driver, device: str, field: str):
    return driver.find_element("css selector", f'#fleet tr[data-device="{device}"] [data-field="{field}"]')


PAGED_FLEET = 120                 # devices: 50 a page, so three pages


def fleet_report(n: int, ts: float, state: str) -> dict:
    return {"ts": ts, "state": state, "version": "1.0.0", "hardware": "fotalab-m4", "slot": "a",
            "group": "sim" if n % 4 else "lab", "progress": 0.5 if state == State.DOWNLOADING else None}


@pytest.fixture(scope="module")
def paged_server(tmp_path_factory, require) -> Iterator[tuple[object, Registry]]:
    """A local update server (no broker) with PAGED_FLEET devices written into its registry as
    the ingester writes them: every third one downloading, the even ones online."""
    require(browser_problem())
    from fotalab.lab.locallab import Server, build_releases

    root = tmp_path_factory.mktemp("paged")
    server = Server(build_releases(root / "store"), root / "server.log", workers=1,
                    env={"FOTA_API_TOKEN": "paged", "FOTA_MQTT_HOST": "", "FOTA_SERVER_THREADS": "8"}).start()
    try:
        registry = Registry(server.data_dir / "registry.sqlite3")
        with registry.batch():
            for n in range(1, PAGED_FLEET + 1):
                registry.record_state(f"sim-{n:03d}", fleet_report(n, 1.0, State.DOWNLOADING if n % 3 == 0
                                                                   else State.RUNNING))
                registry.record_status(f"sim-{n:03d}", n % 2 == 0)
        yield server, registry
    finally:
        server.stop()


def page_ids(driver) -> list[str]:
    return [tr.get_attribute("data-device") for tr in driver.find_elements("css selector", "#fleet tbody tr")]


def test_fleet_table_pages_filters_and_redraws_only_changed_rows(paged_server, chromium):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import Select

    server, registry = paged_server
    driver = chromium
    driver.get(f"{server.url}/")
    wait_until(driver, lambda d: d.find_element("css selector", "body").get_attribute("data-live") == "connected",
               30, "the dashboard's live stream connected")
    summary = lambda d: d.find_element("css selector", "#fleet-summary").text  # noqa: E731
    wait_until(driver, lambda d: summary(d) == "120 devices · 60 online · 40 downloading", 10, "the fleet's counts")
    assert driver.find_element("css selector", "#plaintext").is_displayed()    # a server reached over plain HTTP
    assert page_ids(driver) == [f"sim-{n:03d}" for n in range(1, 51)]
    assert driver.find_element("css selector", "#fleet-range").text == "1–50 of 120"

    driver.find_element("css selector", "#fleet-next").click()
    wait_until(driver, lambda d: page_ids(d)[:1] == ["sim-051"], 10, "page 2 starting at sim-051")
    assert page_ids(driver) == [f"sim-{n:03d}" for n in range(51, 101)]
    assert driver.find_element("css selector", "#fleet-range").text == "51–100 of 120"
    driver.save_screenshot(str(SCREENSHOTS / "08-fleet-page-2.png"))

    # a change on this page redraws its row only; a change on another page reaches the counts only
    untouched = driver.find_element("css selector", '#fleet tr[data-device="sim-052"]')
    registry.record_state("sim-054", fleet_report(54, 2.0, State.COMMITTED))     # was downloading
    registry.record_state("sim-003", fleet_report(3, 2.0, State.COMMITTED))      # page 1, was downloading
    wait_until(driver, lambda d: cell(d, "sim-054", "state").text == "committed", 10, "sim-054's new state")
    wait_until(driver, lambda d: summary(d) == "120 devices · 60 online · 38 downloading", 10, "the new counts")
    try:
        assert untouched.get_attribute("data-device") == "sim-052"
    except StaleElementReferenceException:
        pytest.fail("a change of sim-054 redrew sim-052's row: the table was redrawn")
    assert not driver.find_elements("css selector", '#fleet tr[data-device="sim-003"]')

    driver.find_element("css selector", "#fleet-next").click()
    wait_until(driver, lambda d: page_ids(d) == [f"sim-{n:03d}" for n in range(101, 121)], 10, "page 3: 20 devices")
    assert driver.find_element("css selector", "#fleet-next").get_attribute("disabled") is not None

    Select(driver.find_element("css selector", "#fleet-state")).select_by_value("downloading")
    expected = [f"sim-{n:03d}" for n in range(3, 121, 3) if n not in (3, 54)]
    wait_until(driver, lambda d: page_ids(d) == expected, 10, "the downloading devices, from page 1")
    assert driver.find_element("css selector", "#fleet-range").text == "1–38 of 38"
    driver.save_screenshot(str(SCREENSHOTS / "09-fleet-filtered.png"))


def test_progress_bar_moves_while_a_device_downloads_and_it_commits(factory_fleet, fleet, dashboard):
    factory_fleet(["device-1"])
    wait_until(dashboard, lambda d: cell(d, "device-1", "version").text == "1.0.0", 30, "device-1 shown on 1.0.0")
    fleet.command(["device-1"], {"cmd": "update"})
    seen: list[float] = []

    def progress_moved(driver) -> bool:
        value = float(cell(driver, "device-1", "progress").get_attribute("value") or 0)
        if cell(driver, "device-1", "state").text == "downloading" and 0 < value < 1 and value not in seen:
            seen.append(value)
            if len(seen) == 2:
                driver.save_screenshot(str(SCREENSHOTS / "01-device-downloading.png"))
        return len(seen) >= 3

    assert not dashboard.find_element("css selector", "#plaintext").is_displayed()   # the lab's HTTPS
    wait_until(dashboard, progress_moved, 120, "device-1's progress bar taking three values while downloading")
    assert seen == sorted(seen), f"the progress bar went backwards: {seen}"
    wait_until(dashboard, lambda d: cell(d, "device-1", "version").text == "2.0.0"
               and cell(d, "device-1", "state").text == "committed", 120, "device-1 committed on 2.0.0")
    dashboard.save_screenshot(str(SCREENSHOTS / "02-device-committed.png"))

    dashboard.find_element("css selector", '#fleet a[href="#/devices/device-1"]').click()
    wait_until(dashboard, lambda d: d.find_element("css selector", "#device").is_displayed()
               and d.find_elements("css selector", '#history li[data-event="committed"]'), 30,
               "device-1's page listing its commit")
    kinds = {li.get_attribute("data-event") for li in dashboard.find_elements("css selector", "#history li")}
    assert {"update_started", "downloaded", "committed"} <= kinds, kinds
    dashboard.save_screenshot(str(SCREENSHOTS / "03-device-history.png"))


def test_killed_device_goes_offline_and_comes_back(compose_lab, dashboard):
    wait_until(dashboard, lambda d: cell(d, "device-2", "online").text == "online", 60, "device-2 online")
    compose_lab.kill("device-2")
    try:
        wait_until(dashboard, lambda d: cell(d, "device-2", "online").text == "offline", 60,
                   "device-2 offline after docker kill")
        dashboard.save_screenshot(str(SCREENSHOTS / "04-device-offline.png"))
    finally:
        compose_lab.start("device-2")
    wait_until(dashboard, lambda d: cell(d, "device-2", "online").text == "online", 90,
               "device-2 online again after docker start")
    dashboard.save_screenshot(str(SCREENSHOTS / "05-device-back-online.png"))


def test_rollout_started_from_the_page_reaches_the_fleet(compose_lab, factory_fleet, dashboard, http, server_url):
    devices = factory_fleet()
    start = dashboard.find_element("css selector", "#rollout-start")
    assert dashboard.find_element("css selector", "body").get_attribute("data-auth") == "read-only"
    assert not start.is_enabled(), "without the token the page must not offer to start a rollout"

    token = compose_lab.read_file("server", "/var/lib/fotalab/api-token")
    dashboard.find_element("css selector", "input#token").send_keys(token)
    dashboard.find_element("css selector", "button#token-save").click()
    wait_until(dashboard, lambda d: d.find_element("css selector", "body").get_attribute("data-auth") == "token",
               10, "the page taking the token")
    form = dashboard.find_element("css selector", "form#rollout-form")
    from selenium.webdriver.support.ui import Select

    Select(form.find_element("css selector", 'select[name="release"]')).select_by_value("2.0.0")
    phases = form.find_element("css selector", 'input[name="phases"]')
    phases.clear()
    phases.send_keys("1,100%")
    base = server_url
    before = {r["id"] for r in http.get(f"{base}/api/v1/rollouts", timeout=5).json()["rollouts"]}
    dashboard.find_element("css selector", "#rollout-start").click()

    def created(_driver) -> dict | None:
        listed = http.get(f"{base}/api/v1/rollouts", timeout=5).json()["rollouts"]
        new = [r for r in listed if r["id"] not in before]
        return new[0] if new else None

    rollout = wait_until(dashboard, created, 15, "the rollout created by the page (GET /api/v1/rollouts)")
    assert rollout["release"] == "2.0.0" and [p["cumulative_devices"] for p in rollout["phases"]] == [1, len(devices)]
    row = f'#rollouts [data-rollout="{rollout["id"]}"]'
    wait_until(dashboard, lambda d: d.find_element("css selector", f'{row} [data-field="status"]').text == "running",
               15, f"rollout {rollout['id']} shown running")
    dashboard.save_screenshot(str(SCREENSHOTS / "06-rollout-running.png"))
    wait_until(dashboard, lambda d: d.find_element("css selector", f'{row} [data-field="status"]').text == "completed",
               240, f"rollout {rollout['id']} shown completed")
    decisions = [li.text for li in dashboard.find_elements("css selector", f'{row} [data-field="decisions"] li')]
    assert decisions, "the page shows no gate decision for a completed two-phase rollout"
    for device in devices:
        wait_until(dashboard, lambda d, device=device: cell(d, device, "version").text == "2.0.0", 30,
                   f"{device} shown on 2.0.0")
    dashboard.save_screenshot(str(SCREENSHOTS / "07-rollout-completed.png"))
