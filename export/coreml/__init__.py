"""Core ML export (iOS 18 ML programs) through coremltools; opened, not run, off macOS."""
