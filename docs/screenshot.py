"""Make docs/notification-center.png: a real `serve`, a few domain events, the page in chromium.

    .venv/bin/python docs/screenshot.py [--out docs/notification-center.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.support.servers import ServeProcess  # noqa: E402
from tests.support import token  # noqa: E402
from tests.test_browser import CHROMIUM_ARGS, browser_binary  # noqa: E402

USER = "supervisor-maria"
EVENTS = [
    ("campaign.milestone", {"userId": USER, "campaignId": "cmp-7", "campaignName": "Q4 Early Delinquency", "percent": 50}),
    ("call.completed", {"userId": USER, "agentId": "agent-3", "callId": "c-1041", "debtorName": "Ana Ruiz", "durationSeconds": 312, "outcome": "promise_to_pay"}),
    ("agent.alert", {"userId": USER, "agentId": "agent-12", "metric": "sentiment", "value": 0.21, "threshold": 0.35}),
    ("payment.received", {"userId": USER, "amount": 2450, "accountId": "AC-2024-1234", "debtorName": "John Smith"}),
]
LIVE = [
    ("call.high_value", {"userId": USER, "callId": "c-1077", "debtorName": "Robert Chen", "balance": 48200}),
    ("call.escalation", {"supervisorId": USER, "agentId": "agent-7", "callId": "c-1080", "debtorName": "John Smith", "reason": "caller disputes the debt"}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "notification-center.png"))
    args = parser.parse_args()
    service = token("docs-service", ["service"])
    with tempfile.TemporaryDirectory() as folder:
        server = ServeProcess(Path(folder)).start()
        try:
            for event_type, data in EVENTS:
                server.call("POST", "/api/events", service, {"type": event_type, "data": data})
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=browser_binary(), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1100, "height": 760})
                page.goto(f"{server.url}/#token={token(USER)}")
                expect(page.locator("#connection")).to_have_attribute("data-state", "open")
                expect(page.locator("#list > li")).to_have_count(len(EVENTS))
                page.locator("#list > li").nth(2).locator("button.mark-read").click()
                for event_type, data in LIVE:
                    server.call("POST", "/api/events", service, {"type": event_type, "data": data})
                expect(page.locator("#toasts .toast")).to_have_count(2)
                page.screenshot(path=args.out)
                browser.close()
        finally:
            server.stop()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
