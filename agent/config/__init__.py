"""The strict-YAML config toolkit: one base model, file:line:col errors, env overrides, secrets, references."""
