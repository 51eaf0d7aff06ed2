"""Training: LoRA adapters for behaviour (`ragtune train`), and the data they learn from."""
