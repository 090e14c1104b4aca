"""meshgnn: MeshGraphNets surrogates for large 3D CFD meshes."""

__version__ = "0.1.0"
