"""Reading and writing weights: safetensors from scratch, and HF checkpoint folders."""
