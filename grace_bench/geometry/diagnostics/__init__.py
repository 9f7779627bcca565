"""One module per geometry diagnostic: its config, its run function, and its ``registry.register`` call."""
