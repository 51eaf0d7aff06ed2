"""Training: LoRA adapters for behaviour (`ragtune train`), and the data sets they are trained and judged on."""
