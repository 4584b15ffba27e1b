//! Decode pipelines.
