"""The serving_peers benchmark's other servers (KServe, Triton via PyTriton) and its load client.

The server scripts (kserve_server.py, triton_server.py) run in a virtual
environment of their own (venv.py makes it), not fedge's: kserve and pytriton
bring their own pins, and cannot even share one process (duplicate protobuf
symbols). They import nothing from fedge.
"""
