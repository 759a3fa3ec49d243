"""What inference loads: the MONAI bundle reader (bundle.py) and the two shipped bundles beside it."""
