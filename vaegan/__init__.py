"""vaegan: adversarial training of variational auto-encoders (Khan, Hayat and Barnes, WACV 2018)."""

__version__ = "0.1.0"
