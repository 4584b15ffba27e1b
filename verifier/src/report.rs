//! What a run found, per VM and per file, in human and JSON form (SPEC.md VER-1, ERR-1).

use qbackup_format::header::Header;
use qbackup_format::{Error, ErrorClass};
use serde_json::{json, Value};

/// Facts about the archive from its authenticated header.
#[derive(Debug, Clone)]
pub struct ArchiveInfo {
    pub header: Header,
    /// scrypt parameters of `backup-header.hmac` (v4): logN, r, p.
    pub kdf: Option<(u8, u32, u32)>,
    pub qubes_xml_flavor: Option<String>,
}

/// One VM from qubes.xml, for `list`.
#[derive(Debug, Clone, Default)]
pub struct VmInfo {
    pub name: String,
    pub class: String,
    pub label: Option<String>,
    pub template: Option<String>,
    pub netvm: String,
    pub backup_path: Option<String>,
    pub backup_size: u64,
    pub included: bool,
}

/// One backed-up file of the archive.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    pub path: String,
    pub vm: Option<String>,
    pub chunks: u32,
    /// Bytes of the archive members (ciphertext) of this file.
    pub stored_bytes: u64,
    /// Sum of the logical sizes of its inner entries.
    pub size: u64,
    /// Non-hole data bytes of its inner entries.
    pub data_bytes: u64,
    pub entries: u64,
    pub error: Option<Error>,
    pub skipped: bool,
    /// Odd but harmless facts about this file (reported as notes).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub error: Error,
    pub vm: Option<String>,
    pub file: Option<String>,
}

/// Authenticated but odd: reported, not a failure (VER-4).
#[derive(Debug, Clone)]
pub struct Warning {
    pub vm: String,
    pub message: String,
    /// The VM's declared backup-size.
    pub declared: u64,
    /// The VM's data bytes in the archive.
    pub data: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub archive: Option<ArchiveInfo>,
    pub vms: Vec<VmInfo>,
    pub files: Vec<FileReport>,
    pub findings: Vec<Finding>,
    pub warnings: Vec<Warning>,
    pub notes: Vec<String>,
    pub bytes_read: u64,
    pub extracted_to: Option<String>,
}

impl Report {
    pub fn fail(&mut self, error: Error, vm: Option<&str>, file: Option<&str>) {
        self.findings.push(Finding {
            error,
            vm: vm.map(str::to_string),
            file: file.map(str::to_string),
        });
    }

    pub fn warn(&mut self, warning: Warning) {
        self.warnings.push(warning);
    }

    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// The class that decides the exit code: the first finding's.
    pub fn first_class(&self) -> Option<ErrorClass> {
        self.findings.first().map(|f| f.error.class())
    }

    pub fn to_json(&self, command: &str) -> Value {
        let archive = self.archive.as_ref().map(|a| {
            let h = &a.header;
            json!({
                "version": h.version.number(),
                "header_present": h.present,
                "encrypted": h.encrypted,
                "compressed": h.compressed,
                "compression_filter": h.compression_filter,
                "crypto_algorithm": h.crypto_algorithm,
                "hmac_algorithm": h.hmac_algorithm,
                "backup_id": h.backup_id,
                "kdf": a.kdf.map(|(log_n, r, p)| json!({"log_n": log_n, "r": r, "p": p})),
                "qubes_xml": a.qubes_xml_flavor,
            })
        });
        let vms: Vec<Value> = self
            .vms
            .iter()
            .map(|v| {
                let files: Vec<Value> = self
                    .files
                    .iter()
                    .filter(|f| f.vm.as_deref() == Some(&v.name))
                    .map(file_json)
                    .collect();
                let failed = self.findings.iter().any(|f| f.vm.as_deref() == Some(&v.name));
                json!({
                    "name": v.name, "class": v.class, "label": v.label, "template": v.template,
                    "netvm": v.netvm, "included": v.included, "backup_path": v.backup_path,
                    "backup_size": v.backup_size,
                    "status": if !v.included { "not-in-backup" } else if failed { "failed" } else { "ok" },
                    "files": files,
                })
            })
            .collect();
        let findings: Vec<Value> = self
            .findings
            .iter()
            .map(|f| json!({"class": f.error.class().as_str(), "message": f.error.message(), "vm": f.vm, "file": f.file}))
            .collect();
        let mut doc = json!({
            "schema": qbackup_console::SCHEMA,
            "ok": self.ok(),
            "command": command,
            "archive": archive,
            "vms": vms,
            "findings": findings,
            "warnings": self.warnings.iter().map(|w| json!({
                "kind": "backup-size", "vm": w.vm, "message": w.message,
                "declared": w.declared, "data": w.data,
            })).collect::<Vec<Value>>(),
            "notes": self.notes,
            "bytes_read": self.bytes_read,
        });
        if let Some(dir) = &self.extracted_to {
            doc["extracted_to"] = json!(dir);
        }
        if let Some(first) = self.findings.first() {
            doc["error"] =
                json!({"class": first.error.class().as_str(), "message": first.error.message()});
        }
        doc
    }

    pub fn human(&self, command: &str, listing: bool) -> String {
        let mut out = String::new();
        if let Some(a) = &self.archive {
            let h = &a.header;
            out += &format!(
                "Backup format {}{}, {}, {}, hmac {}",
                h.version.number(),
                if h.present { "" } else { " (no header)" },
                if h.encrypted {
                    "encrypted"
                } else {
                    "not encrypted"
                },
                match (&h.compressed, &h.compression_filter) {
                    (true, Some(f)) => format!("compressed ({f})"),
                    (true, None) => "compressed".to_string(),
                    _ => "not compressed".to_string(),
                },
                h.hmac_algorithm
            );
            if let Some(id) = &h.backup_id {
                out += &format!(", backup-id {id}");
            }
            if let Some((n, r, p)) = a.kdf {
                out += &format!(", scrypt logN {n} r {r} p {p}");
            }
            out += "\n";
        }
        if !self.vms.is_empty() {
            out += &format!(
                "{:<24} {:<14} {:<20} {:<16} {:<8} {:>14}  {}\n",
                "VM", "CLASS", "TEMPLATE", "NETVM", "LABEL", "BACKUP SIZE", "STATUS"
            );
            for v in self.vms.iter().filter(|v| v.included || listing) {
                let failed = self
                    .findings
                    .iter()
                    .any(|f| f.vm.as_deref() == Some(&v.name));
                let status = if !v.included {
                    "not in backup"
                } else if listing && command == "list" {
                    "-"
                } else if failed {
                    "FAILED"
                } else {
                    "verified"
                };
                out += &format!(
                    "{:<24} {:<14} {:<20} {:<16} {:<8} {:>14}  {}\n",
                    v.name,
                    v.class,
                    v.template.as_deref().unwrap_or("-"),
                    v.netvm,
                    v.label.as_deref().unwrap_or("-"),
                    v.backup_size,
                    status
                );
                if !listing {
                    for f in self
                        .files
                        .iter()
                        .filter(|f| f.vm.as_deref() == Some(&v.name))
                    {
                        out += &format!(
                            "    {:<40} {:>5} chunks {:>14} bytes stored {:>14} bytes{}\n",
                            f.path,
                            f.chunks,
                            f.stored_bytes,
                            f.size,
                            if f.skipped { " (not selected)" } else { "" }
                        );
                    }
                }
            }
        }
        for n in &self.notes {
            out += &format!("note: {n}\n");
        }
        for w in &self.warnings {
            out += &format!("warning [VM {}]: {}\n", w.vm, w.message);
        }
        for f in &self.findings {
            let at = match (&f.vm, &f.file) {
                (_, Some(file)) => format!(" [{file}]"),
                (Some(vm), None) => format!(" [VM {vm}]"),
                _ => String::new(),
            };
            out += &format!("error{at}: {}\n", f.error);
        }
        let verdict = match (self.ok(), command) {
            (true, "extract") => format!(
                "OK: every selected file verified and extracted to {}",
                self.extracted_to.as_deref().unwrap_or("?")
            ),
            (true, "list") => "OK: header and qubes.xml verified".to_string(),
            (true, _) => "OK: every member authenticated and every VM's data complete".to_string(),
            (false, _) => format!(
                "FAILED: {} finding(s); first: {}",
                self.findings.len(),
                self.first_class().map_or("?", |c| c.as_str())
            ),
        };
        out += &verdict;
        out += "\n";
        out
    }
}

fn file_json(f: &FileReport) -> Value {
    json!({
        "path": f.path, "chunks": f.chunks, "stored_bytes": f.stored_bytes, "size": f.size,
        "data_bytes": f.data_bytes, "entries": f.entries, "skipped": f.skipped,
        "error": f.error.as_ref().map(|e| json!({"class": e.class().as_str(), "message": e.message()})),
    })
}
