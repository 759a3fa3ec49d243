"""Results -> the report model -> report.json, intervals.csv, report.html, DICOM SEG and summary page."""
