"""Retake the README's screenshots: Debian's chromium, through Playwright, against a running `make airflow`.

Run after `make demo` (so there are versions, deployments, drift and alerts to show) with
`make airflow` up in another terminal:

    .venv/bin/python docs/screenshots.py [--url http://127.0.0.1:8080]

It only reads: it opens the trigger forms without submitting them and the ML Ops pages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--passwords", default=str(ROOT / ".local" / "airflow" / "passwords.json"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--out", default=str(HERE / "screenshots"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    passwords = json.loads(Path(args.passwords).read_text())

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=ARGS)

        def login(user: str):
            page = browser.new_context(viewport={"width": 1360, "height": 860}).new_page()
            page.goto(f"{args.url}/")
            page.get_by_label("Username").fill(user)
            page.get_by_label("Password").fill(passwords[user])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(f"{args.url}/")
            return page

        def shot(page, name: str) -> None:
            page.wait_for_timeout(800)
            page.screenshot(path=str(out / f"{name}.png"))
            print(out / f"{name}.png")

        analyst = login("analyst")
        for dag_id, section in (("nightshift_ingest", "Date range"), ("nightshift_train", "Tuning budget")):
            analyst.goto(f"{args.url}/dags/{dag_id}")
            analyst.get_by_role("button", name="Trigger").first.click()
            analyst.get_by_role("dialog").get_by_text(section, exact=True).click()
            shot(analyst, f"form-{dag_id.removeprefix('nightshift_')}")
        analyst.goto(f"{args.url}/dags/nightshift_train/plugin/mlops-dag")
        analyst.frame_locator("iframe").locator("tbody tr").first.wait_for()
        shot(analyst, "mlops-dag-tab")

        oncall = login("oncall")
        view = oncall.frame_locator("iframe")
        for name in ("runs", "deployments", "versions", "drift", "alerts", "validations"):
            oncall.goto(f"{args.url}/plugin/mlops")
            view.get_by_role("link", name={"versions": "Model versions"}.get(name, name.title()), exact=True).click()
            view.locator("h1").wait_for()
            shot(oncall, f"mlops-{name}")
            if name == "deployments":
                view.get_by_role("button", name="Roll back stable…").click()  # a GET: the confirm page only
                # With one version ever served, the page says there is nothing to roll back to.
                confirm = view.get_by_role("button", name="Confirm rollback")
                confirm.or_(view.get_by_text("There is nothing to roll back to")).first.wait_for()
                shot(oncall, "mlops-confirm")
            if name == "versions":
                view.locator("tbody tr").first.get_by_role("link").first.click()
                view.get_by_role("heading", name="Lineage").wait_for()
                shot(oncall, "mlops-version")
            if name == "drift":
                view.get_by_role("link", name="Evidently report").first.click()
                oncall.wait_for_timeout(3000)
                shot(oncall, "mlops-evidently")
            if name == "alerts":
                view.locator("tbody tr").first.get_by_role("link").first.click()
                view.get_by_role("heading", name="Message").wait_for()
                shot(oncall, "mlops-alert")
        browser.close()


if __name__ == "__main__":
    main()
