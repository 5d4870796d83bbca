# cython: language_level=3
# Streaming top-k gallery search and CMC / mAP / mINP (filled in by the runtime work).
