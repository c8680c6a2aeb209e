"""The screenshot of ``anydit serve`` in ``docs/serve.png``: a trained demo model, label ->
image for "seven" with 16 samples, in Debian's Chromium driven by Playwright.

usage: python scripts/serve_screenshot.py RUN_FOLDER [--out docs/serve.png] [--port 7861]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import urllib.request


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--out", default="docs/serve.png")
    ap.add_argument("--port", type=int, default=7861)
    args = ap.parse_args()
    url = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "anydit.cli", "serve", "--checkpoint", args.run,
         "--port", str(args.port)]
    )  # fmt: skip
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        from playwright.sync_api import sync_playwright

        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(url, wait_until="networkidle")
            page.locator("#in-label input").fill("seven")
            page.keyboard.press("Enter")
            page.click("#generate")
            page.wait_for_function(
                "document.querySelector('#status').innerText.includes('generated image')",
                timeout=120_000,
            )
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
