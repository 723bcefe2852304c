"""Config sections every broker connection has, in device profiles and the serve config alike.

Secrets are referenced, never written in a config file: a profile is meant to be
committed, copied between devices and printed in bug reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import Field, StringConstraints, model_validator

from agent.config.base import ENV_NAME_PATTERN, FilePath, StrictModel, rule_broken
from agent.config.secrets import password_from

Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:%-]{1,253}$")]
Port = Annotated[int, Field(ge=1, le=65535)]


class TlsConfig(StrictModel):
    """TLS to the broker; present means on. Paths are relative to the file's directory."""

    ca_file: FilePath | None = Field(
        None, title="CA file",
        description="CA certificate(s) that signed the broker's certificate; null trusts the system store.",
    )
    cert_file: FilePath | None = Field(None, title="Client certificate",
                                       description="Client certificate for mutual TLS; needs key_file.")
    key_file: FilePath | None = Field(None, title="Client key",
                                      description="Private key of cert_file; keep it readable by this process only.")
    insecure: bool = Field(
        False, title="Skip host name check",
        description="Skip checking the broker's hostname against its certificate. For lab set-ups only:"
        " it allows a man in the middle.",
    )

    @model_validator(mode="after")
    def check_client_pair(self) -> TlsConfig:
        """A client certificate is useless without its key and the reverse."""
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise rule_broken(f"mutual TLS needs both cert_file and key_file: set {missing} or remove the other one")
        return self


class Credentials(StrictModel):
    """A broker user; the password comes from an environment variable or a file."""

    unknown_key_hints: ClassVar[dict[str, str]] = {
        "password": "inline passwords are not allowed: put it in an environment variable and set password_env,"
        " or in a file (fedge-cloud acl writes broker-access/secrets/<user>) and set password_file",
    }

    username: str | None = Field(None, min_length=1, max_length=256, title="Username",
                                 description="MQTT username; null connects anonymously.")
    password_env: Annotated[str, StringConstraints(pattern=ENV_NAME_PATTERN)] | None = Field(
        None, title="Password variable", description="Name of the environment variable holding the MQTT password.")
    password_file: FilePath | None = Field(
        None, title="Password file", description="File holding the MQTT password (trailing newline ignored), e.g."
        " a systemd credential or a Kubernetes secret mount; relative paths start at the file's directory.")

    @model_validator(mode="after")
    def check_password_reference(self) -> Credentials:
        """One password source, and only together with a username."""
        if self.password_env is not None and self.password_file is not None:
            raise rule_broken("password_env and password_file are both set: keep one", "password_file")
        source = "password_env" if self.password_env is not None else "password_file"
        if self.username is None and getattr(self, source) is not None:
            raise rule_broken(f"{source} is set but username is not: add username", source)
        return self

    def password(self, at: str, resolve_path: Callable[[str], Path], env: Mapping[str, str] = os.environ
                 ) -> str | None:
        """The referenced password, resolved now (when connecting); ConfigError naming ``at.password_*`` if not."""
        return password_from(self.password_env, self.password_file, at, resolve_path, env)
