"""Synthetic patients with known truth: anatomy, lesions and atrophy (patients.py), and DICOM exports
of them for tests (dicom.py)."""
