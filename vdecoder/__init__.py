"""Waveform decoders: the So-VITS decoders (hifigan/, hifiganwithsnake/) and the standalone NSF-HiFiGAN mel vocoder (nsf_hifigan/)."""
