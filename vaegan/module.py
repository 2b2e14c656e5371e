"""The import path of ``VAEGANModule`` before Step 10's layout; it lives in ``vaegan.models.module``."""

from vaegan.models.module import VAEGANModule, images_of

__all__ = ["VAEGANModule", "images_of"]
