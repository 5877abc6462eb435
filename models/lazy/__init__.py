"""Reading a model without holding it: tensor sources that read one tensor at a time from
disk (safetensors shards by memory map, GGUF tensors dequantized one by one), the module
skeleton whose parameters live on the meta device until a block is needed, and the
sharded writer that puts finished blocks on disk."""
