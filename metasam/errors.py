"""Exceptions raised by metasam: each carries a one-line message that names the culprit."""

from __future__ import annotations

from collections.abc import Iterable


class ValidationError(ValueError):
    """Bad user input: a named field of a file, spec, option or argument is invalid.

    The one exception type for user mistakes: the command line prints it as one line and exits
    with status 2; any other exception is a bug and is shown as one. The message is one line:
    ``[source: ][field: ]problem[; allowed: values]``.
    """

    def __init__(
        self,
        field: str,
        problem: str,
        allowed: str | Iterable[str] | None = None,
        source: str | None = None,
    ) -> None:
        self.field = field
        self.problem = problem
        if allowed is not None and not isinstance(allowed, str):
            allowed = ", ".join(str(a) for a in allowed)
        self.allowed = allowed
        self.source = source
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.field}: {self.problem}" if self.field else self.problem
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        if self.source:
            text = f"{self.source}: {text}"
        return text

    def with_source(self, source: str) -> ValidationError:
        """The same error, attributed to a file or other named source."""
        return type(self)(self.field, self.problem, self.allowed, source)

    def within(self, prefix: str) -> ValidationError:
        """The same error with its field nested under ``prefix`` (``phi[1].p``)."""
        field = f"{prefix}.{self.field}" if not self.field.startswith("[") else prefix + self.field
        return type(self)(field, self.problem, self.allowed, self.source)


class SpecError(ValidationError):
    """A sharpness spec (or one of its parts) is invalid."""


class ConfigError(ValidationError):
    """A training, study or search-space configuration is invalid."""


class NonFiniteStepError(FloatingPointError):
    """A pass of an optimizer step produced a non-finite loss, gradient or weight.

    The parameters are restored to their values before the step and no update is applied.
    A step judged on the device raises when its verdict is read (``found_at``, the last step
    made by then; see :mod:`metasam.optim.finiteness`).
    ``pass_name`` says which pass failed (``"unperturbed pass"``, ``"perturbation 2 of 4"``,
    ``"sharpness surrogate"``, ``"combined gradient"``).
    """

    def __init__(self, pass_name: str, detail: str, step: int,
                 found_at: int | None = None) -> None:
        self.pass_name = pass_name
        self.detail = detail
        self.step = step
        self.found_at = step if found_at is None else found_at
        later = "" if self.found_at == step else \
            f" (read at step {self.found_at}: the steps after it were not applied either)"
        super().__init__(
            f"non-finite {detail} in the {pass_name} of step {step}; "
            f"parameters restored, no update applied{later}"
        )
