"""The base of every config model, and the error a config problem raises."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from raykd.errors import UserError



class ConfigError(UserError):
    """A config that cannot be used. `errors` holds one line per problem."""

    def __init__(self, errors: list[str], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "invalid config\n" + "\n".join(f"  {e}" for e in self.errors))


class Strict(BaseModel):
    """Frozen, unknown keys rejected: a typo is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")
