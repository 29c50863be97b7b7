"""Phase 2, the services every model shares: monitoring, KEDA, Argo Rollouts, Kueue, the entry gateway,
the images, the artifact store, the model promoter and Jenkins."""
