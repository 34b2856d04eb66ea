"""One recipe per method, each reading top to bottom like a user script."""
