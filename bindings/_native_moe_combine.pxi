# MoECombine wrappers (filled in by the MoECombine work).
