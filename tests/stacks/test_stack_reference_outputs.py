"""What a receiving stack reads from its source stack through a StackReference can be read across
passphrases (issue 29, pulumi/pulumi#5151).

Each environment has its own passphrase (docs/cicd.md). A StackReference decrypts the other stack's
secret outputs with the referencing stack's secrets manager; since pulumi/pulumi#19533 (commit
65efa2c, first in v3.171.0; the pinned CLI is 3.255.0) outputs that fail to decrypt are elided instead
of failing the update (pkg/resource/deploy/builtins.go readStackReference: "eliding undecryptable
secrets"; pkg/secrets/passphrase/manager.go answers a wrong passphrase with a locked manager, not an
error), so a cross-stack read works exactly for the outputs that are not secret. The outputs
components/services/model_promoter.py reads must therefore stay plain.

Not fixable in the program: a source stack that does not exist yet fails the read with the engine's
`unknown stack "<org>/mlplatform/<source>"` (pkg/backend/backend.go GetStackOutputs) before any
program code can catch it; docs/architecture.md gives the order of first `up`s and that message."""

from __future__ import annotations

from components.services import model_promoter


def test_the_outputs_other_stacks_read_are_not_secret(result):
    assert model_promoter.STORE_OUTPUT in result.outputs, f"{result.stack} does not export {model_promoter.STORE_OUTPUT}"
    for name in (model_promoter.STORE_OUTPUT, model_promoter.ACCOUNT_OUTPUT):  # the account: EKS stacks only
        assert result.outputs.get(name) != "[secret]", f"{result.stack}: {name} is a secret output: another stack cannot read it"
