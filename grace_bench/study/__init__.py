"""The end-to-end study behind `grace-bench compare`."""
