# KeypointPatchPool wrappers (filled in by the KeypointPatchPool work).
