"""Serving the cloud models to agents: workers on a shared MQTT subscription and their coordinator."""
