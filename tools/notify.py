"""Pipeline notification:  python -m tools.notify STATUS MESSAGE   (NOTIFY_WEBHOOK_URL: a Slack-compatible webhook)

Without NOTIFY_WEBHOOK_URL it only prints (local runs); a failing webhook never fails the pipeline.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    status, message = argv[0], " ".join(argv[1:])
    icon = {"success": ":white_check_mark:", "failure": ":x:"}.get(status, ":information_source:")
    text = f"{icon} mlplatform pipeline {status}: {message}"
    print(text)
    url = os.environ.get("NOTIFY_WEBHOOK_URL")
    if url:
        req = urllib.request.Request(url, data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"})  # noqa: S310 - URL given by the operator
        try:
            urllib.request.urlopen(req, timeout=10)  # noqa: S310 - operator-configured webhook
        except OSError as exc:
            print(f"notification not delivered: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
