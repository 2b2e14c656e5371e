"""vaegan: adversarial training of variational auto-encoders (Khan, Hayat and Barnes, WACV 2018).

``vaegan.VAEGANModule`` is the trained model (``vaegan.models.module``); it is imported on first use,
so that ``import vaegan`` stays free of torch for the command-line checks.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "VAEGANModule":
        from vaegan.models.module import VAEGANModule

        return VAEGANModule
    raise AttributeError(f"module 'vaegan' has no attribute {name!r}")
