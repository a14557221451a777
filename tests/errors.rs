//! Loading errors: every broken input gets an error naming the file, field or tensor.
