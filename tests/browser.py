"""Headless Chromium for the tests: rendered DOM, screenshot and the page's console lines in one run."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Page:
    dom: str
    console: list[str]  # the page's console messages (chromium logs them as INFO:CONSOLE)
    screenshot: Path


def render(chromium: str, url: str, screenshot: Path, budget_ms: int = 20000, offline: bool = False,
           size: str = "1500,1000") -> Page:
    argv = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--virtual-time-budget={budget_ms}", f"--window-size={size}", "--enable-logging=stderr", "--v=0",
            f"--screenshot={screenshot}", "--dump-dom", url]
    if offline:  # any request that would leave the machine fails
        argv.insert(1, "--host-resolver-rules=MAP * ~NOTFOUND")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return Page(r.stdout, [line for line in r.stderr.splitlines() if ":CONSOLE" in line], screenshot)
