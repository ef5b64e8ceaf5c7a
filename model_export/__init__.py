"""Export the trained towers to ONNX with a parity gate against torch."""
