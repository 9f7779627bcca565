"""Leaderboards from result files: Markdown + JSON tables, RobustBench model cards, CLIP_benchmark JSON."""
