"""Alert rules, dashboards and the pure monitoring spec (monitoring.spec)."""
