//! Setup shared by the protocol integration tests (`mod common;` in each).

use qbackup_format::protocol::{Layout, ManifestVm};
use qbackup_format::qubes_xml::NetVm;

/// The VM most protocol tests stream: `work`, an AppVM with volumes, no label, template or
/// net VM, no declared backup size, expecting `expected_files`.
pub fn work_vm(expected_files: &[&str]) -> ManifestVm {
    ManifestVm {
        name: "work".into(),
        class: "AppVM".into(),
        label: None,
        template: None,
        netvm: NetVm::None,
        layout: Layout::Volumes,
        backup_size: 0,
        expected_files: expected_files.iter().map(|s| (*s).into()).collect(),
    }
}
