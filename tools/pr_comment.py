"""Post (or update) the preview as a comment on the pull/merge request:

    python -m tools.pr_comment build/preview.md --forge github --repo owner/name --pr 12     # GITHUB_TOKEN
    python -m tools.pr_comment build/preview.md --forge gitlab --repo 1234 --pr 7            # GITLAB_TOKEN

One comment per PR, found by a hidden marker and its author (the token's account), edited in place on every push (no comment flood).
API roots: GITHUB_API_URL (default https://api.github.com), CI_API_V4_URL (default https://gitlab.com/api/v4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

MARKER = "<!-- mlplatform-preview -->"


def _call(method: str, url: str, headers: dict[str, str], body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **headers})  # noqa: S310 - URL given by the operator
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - the forge API root
        return json.loads(r.read() or b"null")


# GitHub Actions' GITHUB_TOKEN is an installation token: GET /user answers 403, and its comments are
# written by this account.
ACTIONS_BOT = "github-actions[bot]"


def _identity(forge: str, api: str, headers: dict[str, str]) -> str:
    """The account the token writes as."""
    try:
        user = _call("GET", f"{api}/user", headers)
    except urllib.error.HTTPError as e:
        if forge == "github" and e.code == 403:
            return ACTIONS_BOT
        raise
    return user["login"] if forge == "github" else user["username"]


def _author(forge: str, comment: dict) -> str | None:
    return ((comment.get("user") if forge == "github" else comment.get("author")) or {}).get("login" if forge == "github" else "username")


def post(text: str, forge: str, repo: str, pr: int, token: str, api: str | None = None) -> str:
    """Create the marked comment, or update it in place when it exists. Returns 'created'/'updated'."""
    if forge == "github":
        api = (api or os.environ.get("GITHUB_API_URL", "https://api.github.com")).rstrip("/")
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
        listing, edit_method = f"{api}/repos/{repo}/issues/{pr}/comments", "PATCH"
        edit = f"{api}/repos/{repo}/issues/comments/{{id}}"
    else:
        api = (api or os.environ.get("CI_API_V4_URL", "https://gitlab.com/api/v4")).rstrip("/")
        headers = {"PRIVATE-TOKEN": token}
        listing = f"{api}/projects/{urllib.request.quote(repo, safe='')}/merge_requests/{pr}/notes"
        edit_method, edit = "PUT", f"{listing}/{{id}}"
    body = {"body": f"{MARKER}\n{text}"}
    me = _identity(forge, api, headers)
    # Ours is the marked comment *we* wrote: anyone may paste the marker into a comment of their own, and
    # editing theirs would fail (403) or, with a broader token, rewrite a person's words.
    mine = next(
        (c for c in _call("GET", f"{listing}?per_page=100", headers) if MARKER in (c.get("body") or "") and _author(forge, c) == me),
        None,
    )
    if mine:
        _call(edit_method, edit.format(id=mine["id"]), headers, body)
        return "updated"
    _call("POST", listing, headers, body)
    return "created"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tools.pr_comment", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("file", type=Path)
    p.add_argument("--forge", choices=["github", "gitlab"], default="github")
    p.add_argument("--repo", required=True, help="owner/name (GitHub) or project id/path (GitLab)")
    p.add_argument("--pr", type=int, required=True)
    args = p.parse_args(argv)
    token = os.environ.get("GITHUB_TOKEN" if args.forge == "github" else "GITLAB_TOKEN")
    if not token:
        print(
            f"set {'GITHUB_TOKEN' if args.forge == 'github' else 'GITLAB_TOKEN'} to comment on the {'pull' if args.forge == 'github' else 'merge'} request",
            file=sys.stderr,
        )
        return 2
    if args.file.is_symlink():
        # The preview comes from a run of the PR's code: a link could make this step (which holds the
        # token) read and post any file of its machine.
        print(f"{args.file} is a symbolic link: refusing to post it", file=sys.stderr)
        return 2
    print(f"preview comment {post(args.file.read_text(), args.forge, args.repo, args.pr, token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
