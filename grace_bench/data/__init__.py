"""Data: the suite registry, ImageNet-family loaders, class metadata and the micro suite."""
