"""Recovery passes: fine-tuning the compressed model against the dense one."""
