"""Stage 4, data: sparse feature vectors for the toy models (`sparse_features`), tokenised text for
language models (`lm_data`) and resumable batch streams (`stream_state`).

May import: `spd.errors`, `spd.config`, `spd.loading`, `spd.persistence`.
"""
