"""Small tools every room uses, knowing nothing of ladders: sizes as people write them, files written whole,
secrets masked, signals that stop a loop."""
