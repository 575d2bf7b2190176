"""Motif reward model: caption encoder, Bradley-Terry training, intrinsic reward."""
