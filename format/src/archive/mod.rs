//! The archive as a whole: member order, authentication of each member before anything
//! parses it, the backup plan read from qubes.xml, and what "verified" means
//! (SPEC.md ORD-*, MAC-1, VER-*).
//!
//! Drivers (the verifier binary) read members with [`crate::outer_tar::OuterReader`], feed
//! every name to a [`sequencer::Sequencer`], authenticate each member with the functions
//! of [`authenticate`], decode each backed-up file with [`decode`], and check inner
//! entries and completeness against a [`plan::BackupPlan`].

pub mod authenticate;
pub mod decode;
pub mod plan;
pub mod sequencer;
