"""A small AWS IAM policy evaluator for the documents this program renders, where moto stops short.

moto evaluates identity policies (tests/training/test_promotion_iam.py uses it) but not bucket or key
policies, permission boundaries, other accounts or tag conditions, which is where one environment is
kept from another (docs/security.md). This follows the documented evaluation logic (IAM User Guide,
"Policy evaluation logic" and "Cross-account policy evaluation logic"), for the subset we use:

- an explicit Deny in any policy that applies (identity, boundary, resource) wins;
- an identity policy's Allow counts only inside the permission boundary, when the principal has one;
- same account: an Allow of the identity policy (within the boundary) or of the resource policy;
  other account: both (the identity policy within its boundary, and the resource policy);
- an S3 general purpose bucket's tags never reach a condition (S3 ABAC is off by default; ``_context``);
- a KMS key is reached only through its key policy: an Allow there naming the principal, or naming
  its account root (the key then defers to that account's IAM policies, as above).

Conditions: String/Arn operators (Equals, NotEquals, Like, NotLike), Null, Bool, the ``IfExists``
suffix, the ``ForAnyValue:`` prefix; a negated operator is true when the key is absent, a positive one false (as AWS). Unknown
operators raise: a document using one must extend this, not be half-evaluated. Pure Python (both venvs).
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Principal:
    arn: str  # the role ARN (a session acts as its role here)
    policies: list[str] = field(default_factory=list)  # identity policy documents (JSON)
    boundary: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def account(self) -> str:
        return self.arn.split(":")[4]


@dataclass
class Request:
    action: str
    resource: str  # ARN
    resource_account: str
    resource_policy: str | None = None  # bucket policy / key policy (JSON)
    resource_tags: dict[str, str] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)  # e.g. s3:prefix, kms:ViaService, aws:RequestTag/..., iam:PermissionsBoundary


def _list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _like(pattern: str, value: str) -> bool:
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def _action_matches(patterns: Any, action: str) -> bool:
    return any(_like(p.lower(), action.lower()) for p in _list(patterns))


def _one(op: str, want: list, have: Any) -> bool:
    base = op.removesuffix("IfExists")
    values = [str(v) for v in _list(have)]
    tests = {
        "StringEquals": lambda w, h: w == h,
        "StringLike": lambda w, h: _like(w, h),
        "ArnEquals": lambda w, h: w == h,
        "ArnLike": lambda w, h: _like(w, h),
        "Bool": lambda w, h: str(w).lower() == h.lower(),
    }
    negated = {"StringNotEquals": "StringEquals", "StringNotLike": "StringLike", "ArnNotEquals": "ArnEquals", "ArnNotLike": "ArnLike"}
    if base in tests:
        return any(tests[base](str(w), h) for w in want for h in values)
    if base in negated:
        return not any(tests[negated[base]](str(w), h) for w in want for h in values)
    raise ValueError(f"condition operator {op} is not modelled")


def _conditions_hold(conditions: dict, ctx: dict[str, Any]) -> bool:
    for op, pairs in conditions.items():
        # ForAnyValue: true when any request value matches (what _one does over a list); false when the
        # key is absent (no value matches). ForAllValues is not used, so not modelled.
        if op.startswith("ForAllValues:"):
            raise ValueError(f"condition operator {op} is not modelled")
        op = op.removeprefix("ForAnyValue:")
        for key, want in pairs.items():
            want = _list(want)
            present = key in ctx
            if op == "Null":
                if (str(want[0]).lower() == "true") == present:
                    return False
                continue
            if not present:
                # Absent key: IfExists and negated operators match, positive ones do not.
                if op.endswith("IfExists") or "Not" in op:
                    continue
                return False
            if not _one(op, want, ctx[key]):
                return False
    return True


def _principal_matches(stmt: dict, principal: Principal) -> bool:
    p = stmt.get("Principal")
    if p is None:
        return True  # identity policy statement
    if p == "*" or p == {"AWS": "*"}:
        return True
    wanted = _list(p.get("AWS", []))
    return principal.arn in wanted or f"arn:aws:iam::{principal.account}:root" in wanted


def _statement_applies(stmt: dict, principal: Principal, req: Request, ctx: dict) -> bool:
    if "NotAction" in stmt:
        if _action_matches(stmt["NotAction"], req.action):
            return False
    elif not _action_matches(stmt["Action"], req.action):
        return False
    if "NotResource" in stmt:
        if any(_like(r, req.resource) for r in _list(stmt["NotResource"])):
            return False
    elif "Resource" in stmt and not any(_like(r, req.resource) for r in _list(stmt["Resource"])):
        return False
    return _principal_matches(stmt, principal) and _conditions_hold(stmt.get("Condition", {}), ctx)


def _decide(doc: str | None, principal: Principal, req: Request, ctx: dict) -> str | None:
    """'Deny', 'Allow' or None (no statement applies) for one document."""
    if not doc:
        return None
    result = None
    for stmt in _list(json.loads(doc)["Statement"]):
        if _statement_applies(stmt, principal, req, ctx):
            if stmt["Effect"] == "Deny":
                return "Deny"
            result = "Allow"
    return result


def _s3_general_purpose(resource: str) -> bool:
    """A general purpose bucket or an object in one (``arn:aws:s3:::bucket[/key]``; access points and
    directory buckets have other ARNs)."""
    return resource.startswith("arn:aws:s3:::")


def _context(principal: Principal, req: Request) -> dict[str, Any]:
    ctx = {"aws:PrincipalArn": principal.arn, "aws:PrincipalAccount": principal.account, **req.context}
    ctx.update({f"aws:PrincipalTag/{k}": v for k, v in principal.tags.items()})
    # A general purpose bucket's tags are in no request context unless ABAC is enabled on it, which is
    # off by default and which this program never turns on (S3 User Guide, "Enabling ABAC in general
    # purpose buckets": "By default, ABAC is disabled for all Amazon S3 general purpose buckets"; API
    # AbacStatus: "When ABAC is disabled ... you can only use tags for cost tracking purposes"). So a
    # bucket's tag protects nothing here, whatever the caller passes.
    if not _s3_general_purpose(req.resource):
        ctx.update({f"aws:ResourceTag/{k}": v for k, v in req.resource_tags.items()})
    return ctx


def allowed(principal: Principal, req: Request) -> bool:
    """Whether AWS would allow ``principal`` to perform ``req`` (see the module docstring)."""
    ctx = _context(principal, req)
    identity = [_decide(d, principal, req, ctx) for d in principal.policies]
    boundary = _decide(principal.boundary, principal, req, ctx) if principal.boundary else "Allow"
    resource = _decide(req.resource_policy, principal, req, ctx)
    if "Deny" in (*identity, boundary, resource):
        return False
    by_identity = "Allow" in identity and boundary == "Allow"
    if req.action.lower().startswith("kms:"):
        # The key policy must allow; through an account root it defers to that account's IAM policies,
        # which must allow too (always so for another account). Naming the role itself, in the key's
        # own account, needs nothing more.
        if req.resource_policy is None:
            raise ValueError("a KMS request needs the key policy")
        named = _decide(_naming(req.resource_policy, principal.arn), principal, req, ctx) == "Allow"
        return resource == "Allow" and (by_identity or (named and principal.account == req.resource_account))
    if principal.account == req.resource_account:
        return by_identity or resource == "Allow"
    return by_identity and resource == "Allow"


def _naming(doc: str, role_arn: str) -> str:
    """The statements of a resource policy whose Principal names ``role_arn`` itself."""
    statements = [s for s in _list(json.loads(doc)["Statement"]) if role_arn in _list((s.get("Principal") or {}).get("AWS", []))]
    return json.dumps({"Statement": statements})
