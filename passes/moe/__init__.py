"""Mixture-of-experts rewrites: find FFNs, split them into routed experts (`moefy-ffn`)."""
