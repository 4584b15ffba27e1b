//! Cryptographic layers (SPEC.md MAC-*, V3-*, V4-*).
