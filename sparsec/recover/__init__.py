"""Recovery after pruning: the IR as a trainable torch module (`torch_graph`) and
fine-tuning the kept weights against the dense model (`finetune`)."""
