"""Package data, installed as ``meshgnn.data``: the dataset schema (README.md) and OpenFOAM case templates."""
