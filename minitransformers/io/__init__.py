"""Reading and writing weights, each format from scratch with every bound checked.

    safetensors.py   the safetensors format
    hf.py            HF BERT checkpoint folders: the explicit weight map between our names and transformers'
    gguf.py          llama.cpp's GGUF files: header, typed metadata, tensor infos (ggml_blocks.py: the block types)
    llama.py         the Llama weight map: our decoder's names against GGUF's and transformers', Q/K un-permutation
"""
