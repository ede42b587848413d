"""`srd web` end to end: real `srd web` and `srd run` processes on a temp config, spoken to over HTTP and
driven by a headless Chromium.

One daemon and one web process serve the tests that need no password (their files are told apart by
content); the authentication test starts a web process of its own with a password in the config.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from conftest import BENCH, REPO, png_claiming
from daemon_helpers import DaemonProcess, make_image, srd, srd_command, wait_for, write_config
from web_helpers import Client, WebProcess, streamed_part

from srd.web.auth import hash_password

pytestmark = pytest.mark.e2e

MAX_FILE_BYTES = 3_000_000
MAX_REQUEST_BYTES = 8_000_000
PASSWORD = "correct horse battery staple"


@dataclass
class Site:
    root: Path
    inbox: Path
    outbox: Path
    web: WebProcess
    daemon: DaemonProcess

    def client(self) -> Client:
        return Client(self.web.port)


def _config(root: Path, **web: Any) -> Path:
    return write_config(root, web={"max_file_bytes": MAX_FILE_BYTES, "max_request_bytes": MAX_REQUEST_BYTES, **web})


@contextmanager
def _site(root: Path) -> Iterator[Site]:
    root.mkdir(exist_ok=True)
    config = _config(root)
    daemon = DaemonProcess(config)
    web = WebProcess(config)
    try:
        daemon.wait_ready()
        yield Site(root, root / "in", root / "in-out", web, daemon)
    finally:
        web.stop()
        daemon.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with _site(tmp_path_factory.mktemp("web")) as shared:
        yield shared


def _done(client: Client, names: set[str]) -> dict[str, dict[str, Any]] | None:
    files = {item["name"]: item for item in client.get("/api/files").json()["files"] if item["name"] in names}
    return files if len(files) == len(names) and all(f["state"] == "done" for f in files.values()) else None


def test_uploaded_images_are_processed_and_their_results_download_byte_identical(site: Site) -> None:
    """Several images in one multipart upload land in the inbox under their names, the daemon processes them,
    the page's list shows each as done, and each download is byte for byte the outbox file."""
    client = site.client()
    images = {f"shot{i}.png": make_image(Path(f"shot{i}.png"), (40 + i, 48), seed=100 + i) for i in range(3)}
    reply = client.upload(list(images.items()))
    assert reply.status == 200, reply.body
    assert [item["name"] for item in reply.json()["stored"]] == list(images)
    files = wait_for(lambda: _done(client, set(images)), 30, "the uploads to be processed\n" + site.daemon.log_tail())
    for name, item in files.items():
        download = client.get(item["result_url"] + "?download=1")
        assert download.status == 200
        assert download.body == (site.outbox / name).read_bytes()
        assert name in download.headers["content-disposition"]
        page = client.get(item["page_url"])
        assert page.status == 200 and b'id="compare"' in page.body
    assert not [p for p in site.inbox.iterdir() if p.name.startswith(".srd-upload-")], "an upload temp was left"


def test_non_ascii_names_round_trip_as_utf8_to_the_download(site: Site) -> None:
    """Names beyond Latin-1 (CJK, Cyrillic, emoji) and accented Latin, sent as raw UTF-8 as browsers do, are kept
    exactly through the inbox, the outbox, the page's list and the download's RFC 5987 file name."""
    client = site.client()
    images = {name: make_image(Path("u.png"), (36 + i, 40), seed=300 + i)
              for i, name in enumerate(["写真.png", "café.png", "Фото 🌄.png"])}
    reply = client.upload(list(images.items()))
    assert reply.status == 200, reply.body
    assert [item["name"] for item in reply.json()["stored"]] == list(images)
    files = wait_for(lambda: _done(client, set(images)), 30, "the uploads to be processed\n" + site.daemon.log_tail())
    for name, item in files.items():
        assert (site.outbox / name).is_file()
        download = client.get(item["result_url"] + "?download=1")
        assert download.status == 200 and download.body == (site.outbox / name).read_bytes()
        assert f"filename*=UTF-8''{quote(name)}" in download.headers["content-disposition"]


def test_a_file_the_daemon_fails_shows_as_failed_with_its_reason(site: Site) -> None:
    """A PNG whose header passes the guard but whose pixel data is damaged is failed by the daemon; its page's
    API reports the state and the daemon's reason."""
    client = site.client()
    png = bytearray(make_image(Path("x.png"), (64, 64), seed=205))
    idat = png.index(b"IDAT")
    png[idat + 8:idat + 40] = bytes(32)  # inside the IDAT data: lengths intact, content broken
    stored = client.upload([("damaged.png", bytes(png))]).json()["stored"]
    api = f"/api/files/0/{stored[0]['sha256']}"
    failed = wait_for(lambda: (item := client.get(api).json()["file"])["state"] == "failed" and item, 30,
                      "the damaged file to fail\n" + site.daemon.log_tail())
    assert failed["name"] == "damaged.png" and failed["reason"] and failed["result_url"] is None


def test_a_name_taken_in_the_inbox_gets_a_suffix_and_a_path_in_a_name_is_dropped(site: Site) -> None:
    """A file name with a path lands in the inbox root under its base name, and a name already there is never
    replaced: the second file gets name-1."""
    client = site.client()
    first = make_image(Path("a.png"), seed=201)
    second = make_image(Path("a.png"), seed=202)
    stored = client.upload([("../../dup.png", first), ("dup.png", second)]).json()["stored"]
    assert [item["name"] for item in stored] == ["dup.png", "dup-1.png"]
    assert (site.inbox / "dup.png").read_bytes() == first
    assert (site.inbox / "dup-1.png").read_bytes() == second
    assert not (site.root / "dup.png").exists()


@pytest.mark.parametrize(("name", "why"), [
    (".hidden.png", "hidden"), ("CON.png", "reserved"), ("photo.part", "ignore"), ("..", "no usable")])
def test_names_the_daemon_would_never_take_are_refused(site: Site, name: str, why: str) -> None:
    """Hidden, reserved, ignored and empty names are refused with the reason, and nothing is written."""
    before = sorted(p.name for p in site.inbox.iterdir())
    reply = site.client().upload([(name, make_image(Path("x.png"), seed=203))])
    assert reply.status == 422
    assert why in reply.json()["error"]
    assert sorted(p.name for p in site.inbox.iterdir()) == before


def test_uploads_the_daemon_would_refuse_are_refused_before_they_are_stored(site: Site) -> None:
    """The daemon's guard runs on the upload: not an image, a bomb (header over max_input_pixels), a file over
    the size limit, a request over its limit; none leaves a file or a temp in the inbox."""
    client = site.client()
    before = sorted(p.name for p in site.inbox.iterdir())
    assert client.upload([("junk.jpg", os.urandom(5000))]).status == 422
    bomb = client.upload([("bomb.png", png_claiming(20000, 20000))])
    assert bomb.status == 413 and "max_input_pixels" in bomb.json()["error"]
    big = client.upload([("big.bmp", make_image(Path("x.bmp"), (1024, 1100)))])  # 3.4 MB
    assert big.status == 413 and str(MAX_FILE_BYTES) in big.json()["error"]
    declared = client.request("POST", "/api/upload?inbox=0", b"x", {
        "content-type": "multipart/form-data; boundary=b", "x-csrf-token": client.csrf(),
        "content-length": str(MAX_REQUEST_BYTES + 1)})
    assert declared.status == 413
    assert sorted(p.name for p in site.inbox.iterdir()) == before


def test_an_endless_upload_is_cut_off_at_the_limit_without_filling_the_disk(site: Site) -> None:
    """A chunked upload (no length given) of a file far over the limit is refused once the limit is passed:
    the server stops reading, and nothing of it stays on the disk."""
    client = site.client()
    sent = [0]
    boundary, body = streamed_part("endless.bmp", make_image(Path("x.bmp"), (64, 64)), 2_000_000_000, sent)
    started = time.monotonic()
    try:
        reply = client.request("POST", "/api/upload?inbox=0", body, {
            "content-type": f"multipart/form-data; boundary={boundary}", "x-csrf-token": client.csrf()})
        assert reply.status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the client was still sending: refused as well
    assert sent[0] < 10 * MAX_FILE_BYTES, f"the server read {sent[0]} bytes of a refused upload"
    assert time.monotonic() - started < 20
    assert not [p for p in site.inbox.iterdir() if "endless" in p.name or p.name.startswith(".srd-upload-")]


def test_uploads_need_the_pages_csrf_token_and_this_origin(site: Site) -> None:
    """A cross-site form post carries neither the token header nor this origin: it is refused."""
    client = site.client()
    image = [("csrf.png", make_image(Path("x.png"), seed=204))]
    assert client.upload(image, csrf=False).status == 403
    assert client.upload(image, headers={"x-csrf-token": "guessed"}).status == 403
    assert client.upload(image, headers={"origin": "http://evil.example"}).status == 403
    assert not (site.inbox / "csrf.png").exists()


def test_nothing_outside_the_outbox_is_served(site: Site) -> None:
    """Downloads come only from the outbox: `..` (plain and encoded), encoded slashes, symlinks to a file or a
    folder outside, dot-files and special names are all a plain 404."""
    client = site.client()
    (site.root / "secret.txt").write_text("secret")
    (site.outbox / "sub").mkdir(exist_ok=True)
    (site.outbox / "link.png").symlink_to(site.root / "secret.txt")
    (site.outbox / "linked-dir").symlink_to(site.root)
    (site.outbox / ".hidden.png").write_text("hidden")
    (site.inbox / "sub-in.png").write_bytes(b"not served")
    for path in ["/outbox/0/../secret.txt", "/outbox/0/%2e%2e/secret.txt", "/outbox/0/..%2fsecret.txt",
                 "/outbox/0/%2E%2E%2Fsecret.txt", "/outbox/0/sub/..%2f..%2fsecret.txt", "/outbox/0//etc/passwd",
                 "/outbox/0/%2fetc%2fpasswd", "/outbox/0/link.png", "/outbox/0/linked-dir/secret.txt",
                 "/outbox/0/.hidden.png", "/outbox/0/..%5csecret.txt", "/outbox/0/%00", "/outbox/0/sub",
                 "/outbox/0/../in/sub-in.png", "/outbox/1/x.png", "/static/../srd.yaml"]:
        reply = client.get(path)
        assert reply.status == 404, f"{path} was answered {reply.status}"
        assert b"secret" not in reply.body


def test_a_password_guards_every_page_and_download_and_never_reaches_the_log(tmp_path: Path) -> None:
    """With web.password_hash set, pages redirect to the login, the API and downloads answer 401, a wrong
    password is refused, and the right one (login form or HTTP Basic) lets the user in; the log never holds it."""
    config = _config(tmp_path, password_hash=hash_password(PASSWORD))
    (tmp_path / "in-out").mkdir()
    (tmp_path / "in-out" / "r.png").write_bytes(b"result")
    web = WebProcess(config)
    try:
        anonymous = Client(web.port)
        assert anonymous.get("/").status == 303
        assert anonymous.get("/").headers["location"] == "/login"
        assert anonymous.get("/api/files").status == 401
        assert anonymous.get("/outbox/0/r.png").status == 401
        assert anonymous.upload([("p.png", b"x")], csrf=False).status == 401
        assert anonymous.get("/login").status == 200
        wrong = base64.b64encode(b":wrong").decode()
        assert anonymous.get("/api/files", {"authorization": f"Basic {wrong}"}).status == 401
        right = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
        assert anonymous.get("/outbox/0/r.png", {"authorization": f"Basic {right}"}).body == b"result"

        browser = Client(web.port)
        browser.get("/login")
        form = f"csrf={browser.cookies['srd_csrf']}&password=wrong".encode()
        failed = browser.request("POST", "/login", form, {"content-type": "application/x-www-form-urlencoded"})
        assert failed.headers["location"] == "/login?failed=1" and "srd_session" not in browser.cookies
        form = f"csrf={browser.cookies['srd_csrf']}&password={PASSWORD.replace(' ', '+')}".encode()
        ok = browser.request("POST", "/login", form, {"content-type": "application/x-www-form-urlencoded"})
        assert ok.status == 303 and ok.headers["location"] == "/"
        assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
        assert browser.get("/").status == 200
        assert browser.get("/api/files").status == 200
        forged = Client(web.port)
        forged.cookies["srd_session"] = "guessed"
        assert forged.get("/api/files").status == 401
    finally:
        web.stop()
    log = "".join(web.lines)
    assert PASSWORD not in log and "web_login_failed" in log


def test_hash_password_prints_a_hash_that_the_config_accepts(tmp_path: Path) -> None:
    """`srd web --hash-password` reads the password from stdin and prints a hash `srd config check` accepts."""
    made = subprocess.run([*srd_command(), "web", "--hash-password"], input=PASSWORD + "\n", capture_output=True,
                          text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    config = _config(tmp_path, password_hash=made.stdout.strip())
    assert srd("config", "check", str(config)).returncode == 0
    bad = yaml.safe_load(config.read_text())
    bad["web"]["password_hash"] = PASSWORD
    config.write_text(yaml.safe_dump(bad))
    checked = srd("config", "check", str(config))
    assert checked.returncode == 2 and "web.password_hash" in checked.stderr


def _chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,900",
                 "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def test_a_browser_uploads_photos_and_sees_the_results_and_the_comparison(tmp_path: Path) -> None:
    """Headless Chromium picks photos with the page's file input, the list shows them done, and a photo's page
    shows the before/after slider (the original from the browser's own storage), usable from the keyboard,
    and the download link; the page also fits a phone's width. Screenshots go to $SRD_SCREENSHOTS when set
    (docs/web-*.png are those)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    photos = []
    for name in ("bird.png", "butterfly.png", "head.png"):
        photos.append(tmp_path / name)
        shutil.copyfile(BENCH / "Set5" / name, photos[-1])
    shots = Path(os.environ.get("SRD_SCREENSHOTS", tmp_path))
    with _site(tmp_path / "site") as site:
        driver = _chromium()
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(site.web.url + "/")
            assert driver.find_element(By.CSS_SELECTOR, "label[for=inbox]").text == "Inbox"
            driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in photos))
            for photo in photos:
                wait.until(expected_conditions.presence_of_element_located(
                    (By.CSS_SELECTOR, f'#recent li[data-name="{photo.name}"][data-state="done"]')))
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#recent img.thumb')].every(i => i.complete && i.naturalWidth)"))
            driver.save_screenshot(str(shots / "web-upload.png"))
            driver.set_window_size(390, 844)
            driver.save_screenshot(str(shots / "web-phone.png"))
            assert driver.execute_script("return document.documentElement.scrollWidth") <= 390, "wider than a phone"
            driver.set_window_size(1000, 900)
            row = driver.find_element(By.CSS_SELECTOR, '#recent li[data-name="butterfly.png"]')
            row.find_element(By.LINK_TEXT, "Compare").click()
            wait.until(expected_conditions.visibility_of_element_located((By.ID, "compare")))
            wait.until(lambda d: d.execute_script(
                "return document.getElementById('before').complete && document.getElementById('after').complete "
                "&& document.getElementById('after').naturalWidth > 0"))
            driver.find_element(By.ID, "slider").send_keys(Keys.ARROW_LEFT * 15)  # from the keyboard
            frame_pos = "return document.querySelector('.compare-frame').style.getPropertyValue('--pos')"
            assert driver.execute_script(frame_pos) == "35%"
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(shots / "web-compare.png"))
            href = driver.find_element(By.ID, "download").get_attribute("href")
            assert href is not None and href.endswith("/outbox/0/butterfly.png?download=1")
        finally:
            driver.quit()
    for name in ("web-upload.png", "web-phone.png", "web-compare.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_web_section_of_the_config_is_checked_like_every_other(tmp_path: Path) -> None:
    """Unknown keys and out-of-range values in `web:` are config errors with their location."""
    config = _config(tmp_path, port=70000, max_files_per_upload=0, colour="blue")
    checked = srd("config", "check", str(config))
    assert checked.returncode == 2
    for where in ("web.port", "web.max_files_per_upload", "web.colour"):
        assert where in checked.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_web_unit_verifies_and_stays_hardened(tmp_path: Path) -> None:
    """systemd/srd-web.service passes `systemd-analyze verify` (its ExecStart pointed at this venv's srd) and
    keeps an exposure no worse than 1.5 in `systemd-analyze security`."""
    text = (REPO / "systemd" / "srd-web.service").read_text(encoding="utf-8")
    text = text.replace("ExecStart=/opt/srd/venv/bin/srd ", f"ExecStart={Path(sys.prefix) / 'bin' / 'srd'} ")
    unit = tmp_path / "srd-web.service"
    unit.write_text(text)
    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                              text=True, timeout=60)
    assert float(re.search(r"Overall exposure level for srd-web\.service: ([\d.]+)", security.stdout).group(1)) <= 1.5
