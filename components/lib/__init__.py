"""Pure builders the components share: Helm pins, security contexts, IAM documents, KEDA specs, workload
labels and routes. Nothing here creates a resource; the modules the workload venv also imports
(keda_specs, promotion_iam, namespaces) import no Pulumi at all."""
