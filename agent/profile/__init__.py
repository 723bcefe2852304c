"""Device profiles: the schema, loading with file:line:col errors, env overrides.

Use: ``profile = load_profile("edge_profiles/raspberry-pi-4.yaml")``, then
``onnxruntime.InferenceSession(path, providers=profile.hardware.ort_providers())``.
"""

from __future__ import annotations

from agent.config.problems import ConfigError, Location, Problem
from agent.profile.loader import load_profile, parse_profile
from agent.profile.schema import Profile, profile_json_schema

__all__ = [
    "ConfigError",
    "Location",
    "Problem",
    "Profile",
    "load_profile",
    "parse_profile",
    "profile_json_schema",
]
