"""rgbdface: portraits that move with depth.

Joint RGB + depth latent diffusion conditioned on a ReferenceNet
("Joint Learning of Depth and Appearance for Portrait Image Animation").
Heavy modules (torch, diffusers) are imported lazily by the submodules that need them.
"""

__version__ = "0.1.0"
