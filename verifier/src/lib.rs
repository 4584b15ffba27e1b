//! `qbackup-verify` as a library: the driver that runs the format crate over an archive
//! stream, the outputs (verify, extract, emit), and the report. The binary (`main.rs`) is a
//! thin shell around it; fuzz targets and tests call it directly.

pub mod cli;
pub mod driver;
pub mod emit;
pub mod extract;
pub mod output;
pub mod passphrase;
pub mod progress;
pub mod report;
pub mod sandbox;
