"""The model floor: the network, one-step generation, checkpoints (and .safetensors files and model
folders read back), and the training history a checkpoint keeps. Everything above this floor uses a model through it."""
