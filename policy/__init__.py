"""mlplatform policy pack: security and GPU-cost guardrails (rules.py), for CrossGuard and offline."""
