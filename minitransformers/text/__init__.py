"""Text: the tokenizer, real data sources, and dataset loaders."""
