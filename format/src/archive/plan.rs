//! Backup plan.
