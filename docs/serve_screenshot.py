"""Browser check of `uniformer serve`: headless Chromium opens the page, uploads a file, waits for the
answer and saves a screenshot (docs/serve.png in the README).

Not part of the test suite: installing Chromium takes over two minutes (`apt-get install -y chromium`:
2 min 7 s measured on the project machine). Needs Debian's chromium and Playwright, which drives it
(`pip install playwright`; no browser download: it launches /usr/bin/chromium).

    python docs/serve_screenshot.py --checkpoint runs/demo/best.pt --input clip.mp4 --out docs/serve.png

The server runs as `python -m uniformer.cli serve ...` with --python (default: this interpreter).
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", help="NAME.TAG (passed to uniformer serve)")
    p.add_argument("--input", required=True, help="the image or video to upload")
    p.add_argument("--out", default="docs/serve.png")
    p.add_argument("--python", default=sys.executable, help="interpreter that has uniformer and gradio")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--timeout", type=float, default=180.0)
    args = p.parse_args(argv)

    from playwright.sync_api import sync_playwright

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    cmd = [args.python, "-m", "uniformer.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port)]
    if args.model:
        cmd += ["--model", args.model]
    server = subprocess.Popen(cmd)
    try:
        _wait_until_up(url, server, args.timeout)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(args.input)
            page.get_by_role("button", name="Classify").click()  # the classification page
            # the answer is in when the label shows a confidence bar
            page.locator("[data-testid='label-output-value']").first.wait_for(timeout=args.timeout * 1000)
            page.wait_for_timeout(1500)  # let the picture load
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"screenshot: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
