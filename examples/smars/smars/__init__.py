"""A toy SMARS order router used by knightwatch's examples and demo."""
