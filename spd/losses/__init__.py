"""Stage 6, the method's loss terms and their weighted sum (`terms`), and the cut of a sparse toy
batch to its live rows that keeps every loss exact (`row_selection`).

May import: every stage up to `spd.models`.
"""
