"""Federated fine-tuning on the device: the Flower ClientApp, its local training, and the SuperNode it runs in.

Imported by the SuperNode's ClientApp process (torch, flwr) and, for the SuperNode's lifecycle only
(agent/federated/supernode.py: no torch, no flwr), by the agent.
"""
