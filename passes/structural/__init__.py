"""Structural (channel) pruning: coupling rules, dependency groups, importance, ratios, crop."""
