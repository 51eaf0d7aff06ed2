"""Training: LoRA adapters for behaviour, and the base-model folders they are trained on."""
