"""Dataset generators: the built-in packed-column case (gmsh geometry, P1 FEM flow and CO2 uptake).

``meshgnn.generate.column.generate_dataset(out, GenerateConfig(...))`` is what ``meshgnn generate`` runs;
``geometry`` (gmsh) and ``solver`` (scipy.sparse) are its parts.
"""
