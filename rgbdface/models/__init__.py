"""The model core: latent codec, expanded UNet, ReferenceNet, and the one loading core."""
