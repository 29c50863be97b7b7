"""mlplatform: wiring only. Config is validated first, so a bad stack file fails before any resource."""

import pulumi

from components import config
from components.platform import Platform

settings = config.load()
platform = Platform("mlplatform", settings)

pulumi.export("environment", settings.config.environment)
pulumi.export("clusterName", platform.cluster_name)
pulumi.export("kubeconfig", platform.cluster.kubeconfig)
pulumi.export("images", platform.images.refs)
pulumi.export("namespaces", {role: ns.name for role, ns in platform.namespaces.items()})
pulumi.export("modelStore", platform.store.uri)
pulumi.export("trainingJob", platform.training.job_name)
pulumi.export("serviceUrl", platform.model_service.url)
pulumi.export("grafanaAdminPassword", platform.monitoring.grafana_password if platform.monitoring else None)
pulumi.export("jenkinsAdminPassword", platform.jenkins.admin_password if platform.jenkins else None)
