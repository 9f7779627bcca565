"""Models: checkpoint specs and loading, the zero-shot head and classifier, LoRA, micro-CLIP."""
