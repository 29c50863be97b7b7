"""mlplatform: wiring only. Config is validated first, so a bad stack file fails before any resource."""

import pulumi

from components import config
from components.models.model import api_keys, llm_api_keys
from components.platform import Platform

settings = config.load()
platform = Platform("mlplatform", settings)

pulumi.export("environment", settings.config.environment)
pulumi.export("clusterName", platform.cluster_name)
pulumi.export("kubeconfig", platform.cluster.kubeconfig)
pulumi.export("images", platform.images.refs)
pulumi.export("namespaces", {role: ns.name for role, ns in platform.namespaces.items()})
pulumi.export("modelStore", platform.store.uri)
pulumi.export("models", {name: m.outputs() for name, m in platform.models.items()})
# The routes' API keys (issue 24 item 10), secrets: `pulumi stack output apiKeys --show-secrets`; llmApiKeys: the LLMs' (older scripts).
# Every model's with serving.apiKey (the entry point checks them for every runtime), model -> client -> key.
pulumi.export("apiKeys", api_keys(platform.models))
pulumi.export("llmApiKeys", llm_api_keys(platform.models))
pulumi.export("entryPoint", platform.entry.base_url)
# The first trained catalogue entry's, for `make train-wait` (a vllm model has no training).
first = next((m for m in platform.models.values() if m.training), None)
pulumi.export("trainingJob", first.training.job_name if first else None)
# The first TF model's URL (trained here or received from another stack).
served = next((m for m in platform.models.values() if m.runtime == "tensorflow"), None)
pulumi.export("serviceUrl", served.service.url if served else None)
pulumi.export("grafanaAdminPassword", platform.monitoring.grafana_password if platform.monitoring else None)
pulumi.export("jenkinsAdminPassword", platform.jenkins.admin_password if platform.jenkins else None)
# The role GitHub/GitLab deploy this stack with (their AWS_DEPLOY_ROLE_ARN); None without `ci`.
pulumi.export("ciDeployRoleArn", platform.ci_role.arn if platform.ci_role else None)
# The role `make deliver` copies received models with (None on a stack that receives none), and the
# account a receiving stack checks it shares with this one (components/services/model_promoter.py).
pulumi.export("promotionRole", platform.promoter.role_arn if platform.promoter else None)
pulumi.export("awsAccountId", platform.account_id)
