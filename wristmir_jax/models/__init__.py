"""Models: functional Flax towers (ViT, ResNet, BERT-style text), the global and local two-tower
models, Hugging Face safetensors import, and FLOPs from XLA cost analysis."""
