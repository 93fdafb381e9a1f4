"""A model in other formats (exporting: the formats by name): ONNX, .safetensors, and the offline web
page (web/: its HTML, CSS and the model in plain JavaScript)."""
