"""campus-guide: an offline campus voice guide and the toolchain that builds its model."""
__version__ = "0.1.0"
