"""LiteRT (TFLite) export through litert-torch; files run by ai-edge-litert."""
