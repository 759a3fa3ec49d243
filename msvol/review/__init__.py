"""The radiologist's confirm/correct loop: findings store, decisions, sign-off, review API."""
