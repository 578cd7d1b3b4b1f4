"""Drives Berth's web interface in headless Chromium: search as you type,
open a repository, open a manifest, delete a tag. Saves screenshots.

Usage: browser.py BASE_URL SCREENSHOT_DIR
"""
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

base, shots = sys.argv[1], sys.argv[2]

opts = webdriver.ChromeOptions()
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"):
    opts.add_argument(arg)
opts.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
wait = WebDriverWait(driver, 10)


def shot(name):
    driver.save_screenshot(os.path.join(shots, name + ".png"))


def result_names():
    # Read in one step: the list is re-rendered as the user types.
    return driver.execute_script("return [...document.querySelectorAll('#results a.name')].map(a => a.textContent)")


try:
    # Search: results appear as you type.
    driver.get(base + "/")
    box = wait.until(EC.presence_of_element_located((By.ID, "q")))
    box.send_keys("ngin")
    expected = ["nginx", "web/nginx-proxy", "tools/mynginx", "tools/web"]
    wait.until(lambda d: result_names() == expected)
    shot("1-search")
    box.send_keys(" platform:linux/arm64")
    wait.until(lambda d: result_names() == ["nginx"])
    assert "q=ngin" in driver.current_url

    # Repository page.
    driver.find_element(By.LINK_TEXT, "nginx").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "table.tags")))
    page = driver.page_source
    assert "docker pull" in page and "1.27" in page and "latest" in page
    assert "The nginx web server" in page
    shot("2-repository")
    driver.set_window_size(390, 844)
    shot("2-repository-phone")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 400, "no horizontal scrolling at phone width: %s" % width
    driver.set_window_size(1280, 900)

    # Manifest page.
    driver.find_element(By.LINK_TEXT, "1.27").click()
    wait.until(EC.presence_of_element_located((By.XPATH, "//h2[starts-with(., 'Layers')]")))
    page = driver.page_source
    for needle in ("Labels", "Annotations", "History", "Referrers", "COPY hello.txt", "org.opencontainers.image.source", "linux/amd64"):
        assert needle in page, needle
    shot("3-manifest")

    # Delete a tag, with confirmation.
    driver.back()
    button = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[data-delete-tag='1.27']")))
    button.click()
    alert = wait.until(EC.alert_is_present())
    assert "1.27" in alert.text
    alert.accept()
    wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "button[data-delete-tag='1.27']"))
    shot("4-after-delete")
    driver.refresh()
    assert "1.27" not in driver.find_element(By.CSS_SELECTOR, "table.tags").text
    print("browser test passed")
finally:
    driver.quit()
