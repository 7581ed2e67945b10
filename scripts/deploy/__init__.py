"""Deployment and inspection: ONNX export, attention pictures, the Gradio web demo / Hugging Face Space."""
