"""Phase 1, the cluster: EKS (or an existing cluster), the platform namespaces, the GPU node pools and what
scales them, the GPU add-ons and the CI deploy roles."""
