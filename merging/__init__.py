"""merge lab: merge a speech encoder with a music encoder, and see why the merge works."""
