"""Operations: running msvol over many exams and patients, and the cohort tables built from their reports."""
