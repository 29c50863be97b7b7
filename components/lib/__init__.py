"""Pure builders the components share; nothing here creates a resource except ``helm.release`` (the one
way the project installs a chart). Pulumi-free, so the workload venv and the offline policy checker import
them too (tests/unit/test_layout.py checks it): keda_specs, rollout_specs, network, workload, iam,
promotion_iam. helm and security build Pulumi argument types."""
