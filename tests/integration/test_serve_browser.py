"""The ``bmcd serve`` upload page in a real headless Chromium (the system's package).

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium
chromium-driver``) and selenium; skips cleanly without them. Selenium is pointed at the
system chromedriver, so Selenium Manager downloads nothing. The page uploads the real
C-NMC sample cells through its file input; the cards must show the labels and p(all) that
``Classifier.load(..., backend="onnx")`` gives on the same files. A screenshot is saved in
the test's temp folder.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("onnx")
webdriver = pytest.importorskip("selenium.webdriver")


def _system_chromium() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    driver = shutil.which("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").is_file() else None
    )
    if not browser or not driver:
        pytest.skip("system chromium / chromedriver not installed "
                    "(apt-get install -y chromium chromium-driver)")
    return browser, driver


@pytest.fixture
def server(tmp_path, cnmc_sample_files):
    import uvicorn

    from _serve_helpers import build_serving_model, free_port
    from bmcd.serving import create_app

    model = build_serving_model(tmp_path / "model", cnmc_sample_files)
    app = create_app(model, max_batch=8, max_wait_ms=5)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/", model
    srv.should_exit = True
    thread.join(timeout=15)


def test_upload_page_shows_backend_labels_and_probabilities(server, cnmc_sample_files, tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from bmcd import Classifier
    from bmcd.data import parse_subject

    browser, driver_path = _system_chromium()
    url, model = server
    files = [str(f) for f in cnmc_sample_files]

    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1400"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.get(url)
        WebDriverWait(driver, 20).until(
            lambda d: "sha256" in d.find_element(By.ID, "model").text)
        # the file input has a visible label (accessibility) and is reachable by keyboard
        label = driver.find_element(By.CSS_SELECTOR, "label[for=files]")
        assert label.text.strip()
        assert driver.find_element(By.ID, "drop").get_attribute("tabindex") == "0"
        driver.find_element(By.ID, "files").send_keys("\n".join(files))
        WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done")
            == str(len(files)))
        cards = driver.find_elements(By.CSS_SELECTOR, "#cards .card")
        by_name = {c.get_attribute("data-name"): c for c in cards}
        assert sorted(by_name) == sorted(Path(f).name for f in files)

        clf = Classifier.load(model, backend="onnx")
        p = clf.predict_proba(files)[:, 1]
        labels = clf.predict(files)
        for f, p_ref, lab in zip(files, p, labels, strict=True):
            c = by_name[Path(f).name]
            assert c.get_attribute("data-label") == lab
            # JSON carries the float32 value; the page keeps it as given
            assert abs(float(c.get_attribute("data-p-all")) - p_ref) <= 1e-6
            shown = c.find_element(By.CSS_SELECTOR, ".p").text
            assert shown == f"{p_ref:.4f}"
            assert c.find_element(By.CSS_SELECTOR, ".label").text == lab
            img_ok = driver.execute_script(
                "var i = arguments[0].querySelector('img'); return i.complete && i.naturalWidth > 0;", c)
            assert img_ok, f"the cell image of {f} did not render"
        assert {str(x) for x in labels} == {"all", "hem"}

        # per-subject summary: one row per subject, counts equal the backend's labels
        rows = driver.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
        import re

        def natural(s):  # the page sorts 2 before 11 and H2 before H10
            return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]

        subjects = sorted({parse_subject(f) for f in files}, key=natural)
        assert [r.get_attribute("data-subject") for r in rows] == subjects
        for r in rows:
            s = r.get_attribute("data-subject")
            idx = [i for i, f in enumerate(files) if parse_subject(f) == s]
            cells = [td.text for td in r.find_elements(By.TAG_NAME, "td")]
            assert int(cells[0]) == len(idx)
            assert int(cells[1]) == sum(labels[i] == "all" for i in idx)
            assert float(cells[3]) == pytest.approx(float(np.mean(p[idx])), abs=6e-4)

        shot = tmp_path / "serve_page.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
