"""Raw input -> Patient: the only readers of raw input (BIDS NIfTI, DICOM exports), the protocol
rules that recognise and check series, and the pseudonym registry."""
