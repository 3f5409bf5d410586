"""GauGAN / SPADE in plain PyTorch: layers, networks, losses, data reader, trainer and synthesizer."""
