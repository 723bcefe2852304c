"""fedge on one machine: a private Mosquitto, the reference worker, and the demo."""
