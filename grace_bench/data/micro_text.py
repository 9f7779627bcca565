"""Class names and prompt templates of the micro suite (the analogue of OpenAI's ImageNet prompts)."""

MICRO_CLASSNAMES: list[str] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
]

# Evaluation templates: the micro analogue of the 80 OpenAI ImageNet templates.
MICRO_TEMPLATES: list[str] = [
    "a photo of the digit {}.",
    "a photo of the number {}.",
    "a handwritten {}.",
    "a drawing of the digit {}.",
    "a sketch of the number {}.",
    "a blurry photo of the digit {}.",
    "a colourful rendition of the digit {}.",
    "a low resolution photo of the number {}.",
    "a pixelated image of the digit {}.",
    "the digit {}.",
]

# The single template used in training by TeCoA, FARE and PMG-AFT (and by LAR-AWP/GRACE's task loss).
SINGLE_TEMPLATE: str = "This is a photo of a {}"
