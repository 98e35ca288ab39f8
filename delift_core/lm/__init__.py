"""The causal LM: loading, tokenisation, the teacher-forced scorer."""
