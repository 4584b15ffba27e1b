//! Inner tar (SPEC.md TAR-*).
