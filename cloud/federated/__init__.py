"""Federated fine-tuning on the cloud side: the Flower ServerApp, its round loop, releases, and the SuperLink."""
