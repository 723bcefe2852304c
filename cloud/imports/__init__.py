"""Users' own models: an ONNX file checked, described from its graph and added to the store (`models import`)."""
