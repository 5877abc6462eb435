"""ONNX export: graphs from torch.onnx (dynamo), compressed weights rewritten in."""
