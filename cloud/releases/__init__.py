"""Releases: the signing key, signed manifests and releases, the release channel and canary rollouts."""
