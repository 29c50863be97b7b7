"""ConfigError: a stack-config mistake, one line per problem naming the stack file and the key."""

from __future__ import annotations

import pulumi

from components.config.schema import NAMESPACE


class ConfigError(pulumi.RunError):
    """A stack-config mistake. ``pulumi.RunError`` makes the engine print the message without a traceback."""

    def __init__(self, stack_file: str, key: str, message: str, more: list[tuple[str, str]] | None = None):
        self.stack_file, self.key, self.message = stack_file, key, message
        self.problems = [(key, message), *(more or [])]
        super().__init__("\n".join(f"{stack_file}: {NAMESPACE}:{k}: {m}" for k, m in self.problems))

    @classmethod
    def many(cls, stack_file: str, problems: list[tuple[str, str]]) -> ConfigError:
        """One error for all problems of a stack file: one line each, the first one first."""
        (key, message), *rest = problems
        return cls(stack_file, key, message, rest)


def stack_file(stack: str) -> str:
    """The file a stack's config (and so every ConfigError about it) comes from."""
    return f"stacks/Pulumi.{stack}.yaml"


def yaml_error_line(path: str, exc: Exception) -> str:
    """A YAML syntax error as one line, ``FILE:LINE:COLUMN: problem (context)``, instead of PyYAML's
    multi-line report. Lines and columns count from 1, as editors do."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    hint = (
        " (check the indentation: YAML nests by spaces, never tabs)"
        if "indent" in problem or "mapping values" in problem or "block" in problem
        else ""
    )
    return f"{where}: invalid YAML: {problem}" + (f", {context}" if context else "") + hint
