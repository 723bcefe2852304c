"""The fleet: broker users and ACL, the device listener, feedback accuracy from heartbeats."""
