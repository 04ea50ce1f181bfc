#!/usr/bin/python3
"""The web UI in a real browser: Debian's chromium driven by chromium-driver + python3-selenium.

Starts `clhost serve`, launches configs/quick.toml from the launch form, watches the accuracy
heatmap fill in, stops the run, resumes it, waits for all T x T cells, opens the HTML report, and
checks that the browser logged no errors. Saves a screenshot of the run page (--screenshot).
Exit 77 (CTest: skipped) with a message when chromium, its driver or selenium is missing.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


def skip(message):
    print("SKIPPED: " + message, flush=True)
    sys.exit(SKIP)


try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:
    skip("python3-selenium is not installed")


def start_server(args, runs):
    command = [args.clhost, "serve", "--port", "0", "--runs", runs, "--configs",
               os.path.join(args.source, "configs"), "--plugin-path", args.plugins, "--quiet"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = server.stdout.readline()
        match = re.search(r"open (http://\S+)", line)
        if match:
            return server, match.group(1)
    server.kill()
    raise RuntimeError("clhost serve did not print its URL")


def make_driver():
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if chromium is None:
        skip("chromium is not installed")
    if not os.path.exists(driver_path):
        skip("chromium-driver is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1500"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


# The run page re-renders as events arrive: read it in one script, never through stale elements.
def filled_cells(driver):
    return driver.execute_script(
        "return document.querySelectorAll('#heatmap rect.cell.filled').length")


def status_of(driver):
    return driver.execute_script(
        "const b = document.querySelector('h1 .status'); return b ? b.dataset.status : ''")


def button_enabled(driver, element_id):
    return driver.execute_script(
        "const b = document.getElementById(arguments[0]); return !!b && !b.disabled", element_id)


def wait(driver, seconds, condition, what):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda d: condition(d))
    except TimeoutException:
        raise AssertionError("timed out waiting for " + what) from None


def launch_from_form(driver, url, name):
    driver.get(url + "#/launch")
    wait(driver, 30, lambda d: len(Select(d.find_element(By.ID, "config-file")).options) > 1,
         "the config list")
    Select(driver.find_element(By.ID, "config-file")).select_by_value("quick.toml")
    driver.find_element(By.ID, "run-name").send_keys(name)
    # Long enough to stop it in the middle; checkpoints often, so the resume has little to redo.
    driver.find_element(By.ID, "overrides").send_keys(
        "train.iterations=1000\nrun.checkpoint_every=250")
    wait(driver, 60, lambda d: d.find_elements(By.CSS_SELECTOR, "#validation .ok"),
         "the form to validate")
    # A typo shows clhost validate's located error, then goes away when fixed.
    overrides = driver.find_element(By.ID, "overrides")
    overrides.send_keys("\ntrain.lrr=1")
    wait(driver, 60, lambda d: d.find_elements(By.CSS_SELECTOR, "#validation .errors li"),
         "the validation error")
    error = driver.find_element(By.CSS_SELECTOR, "#validation .errors li").text
    assert "lrr" in error, error
    overrides.clear()
    overrides.send_keys("train.iterations=1000\nrun.checkpoint_every=250")
    wait(driver, 60, lambda d: d.find_elements(By.CSS_SELECTOR, "#validation .ok")
         and button_enabled(d, "start"), "the form to validate again")
    driver.find_element(By.ID, "start").click()
    wait(driver, 30, lambda d: d.current_url.endswith("#/run/" + name), "the run page")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--clhost", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--plugins", required=True)
    parser.add_argument("--screenshot", default="")
    args = parser.parse_args()
    runs = tempfile.mkdtemp(prefix="clhost-web-")
    server, url = start_server(args, runs)
    driver = make_driver()
    name = "browser_quick"
    try:
        launch_from_form(driver, url, name)
        # The first rows fill in; stop it with tasks still to come.
        wait(driver, 120, lambda d: filled_cells(d) >= 5, "the first matrix row")
        assert filled_cells(driver) < 25, "the run ended before it could be stopped"
        driver.execute_script("document.getElementById('stop').click()")
        wait(driver, 60, lambda d: status_of(d) == "interrupted", "the run to stop")
        assert filled_cells(driver) < 25
        if args.screenshot:  # the matrix part-filled, as a stopped run shows it
            driver.save_screenshot(args.screenshot.replace(".png", "_stopped.png"))
        wait(driver, 10, lambda d: button_enabled(d, "resume"), "Resume")
        driver.execute_script("document.getElementById('resume').click()")
        wait(driver, 180, lambda d: filled_cells(d) == 25 and status_of(d) == "complete",
             "all 5 x 5 cells and the run's end")
        figures = driver.execute_script("return document.getElementById('fig-average').textContent")
        assert re.match(r"0\.\d{4}", figures), figures
        if args.screenshot:
            time.sleep(0.5)  # the last chart update
            driver.save_screenshot(args.screenshot)
            print("screenshot: " + args.screenshot)
        # The runs list shows it complete; the report opens.
        driver.get(url + "#/")
        wait(driver, 20, lambda d: d.find_elements(
            By.CSS_SELECTOR, "tr[data-run='%s'] .status.complete" % name), "the runs list row")
        driver.get(url + "api/runs/%s/report" % name)
        assert "accuracy" in driver.page_source.lower()
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, "browser console errors: %s" % errors
        print("web UI in chromium: launched, stopped, resumed, 25 cells, report: ok")
    finally:
        driver.quit()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
