"""Streaming decoders: LTX-2 video VAE, audio VAE and vocoder, one block at a time."""
