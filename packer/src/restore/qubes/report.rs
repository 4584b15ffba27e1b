//! What a restore into Qubes did, per VM (SPEC.md QRS-7): the table before acting, the
//! final report as text or JSON, and the exit status.

use serde::Serialize;

use super::plan::{Action, Plan, Reference};

/// Where a VM stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Not restored by choice (`reason` says why).
    Skipped,
    /// Planned but the restore stopped before acting on it.
    NotStarted,
    /// Created; its data and settings are not all in (it keeps `backup-restore-in-progress`).
    Incomplete,
    /// Could not be created, or something of it failed (`errors`).
    Failed,
    /// Created with everything the backup holds for it.
    Restored,
    /// `--verify-only`: its data verified.
    Verified,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    /// The name in the backup.
    pub vm: String,
    /// The name on the host (differs when renamed).
    pub name: String,
    pub class: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Every call qubesd refused, and every other failure, in order.
    pub errors: Vec<String>,
    /// What was deliberately not restored (devices without `--restore-devices`, …).
    pub notes: Vec<String>,
    /// Volumes imported (name, bytes).
    pub volumes: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: u32,
    pub vms: Vec<VmReport>,
    /// dom0's home: where it went, or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dom0_home: Option<String>,
    /// The stream's own failure, if any (its class's exit code applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_error: Option<String>,
    /// Every selected VM was restored completely.
    pub complete: bool,
}

impl Report {
    pub fn from_plan(plan: &Plan) -> Report {
        Report {
            schema: 1,
            vms: plan
                .vms
                .iter()
                .map(|v| VmReport {
                    vm: v.backup_name.clone(),
                    name: v.name.clone(),
                    class: v.class.clone(),
                    status: match v.action {
                        Action::Create => Status::NotStarted,
                        Action::Skip(_) | Action::Broken(_) => Status::Skipped,
                    },
                    reason: match &v.action {
                        Action::Create => None,
                        Action::Skip(w) | Action::Broken(w) => Some(w.clone()),
                    },
                    errors: Vec::new(),
                    notes: Vec::new(),
                    volumes: Vec::new(),
                })
                .collect(),
            dom0_home: plan
                .dom0_skipped
                .as_ref()
                .map(|w| format!("not restored: {w}")),
            stream_error: None,
            complete: false,
        }
    }

    /// True when every VM that was to be restored is (QRS-7).
    pub fn all_done(&self) -> bool {
        self.stream_error.is_none()
            && self.vms.iter().all(|v| {
                matches!(
                    v.status,
                    Status::Skipped | Status::Restored | Status::Verified
                )
            })
            && !self
                .dom0_home
                .as_deref()
                .is_some_and(|d| d.starts_with("failed"))
    }

    /// The human report (stderr).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for v in &self.vms {
            let status = serde_json::to_value(v.status)
                .ok()
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default();
            let renamed = if v.name != v.vm {
                format!(" (as {})", v.name)
            } else {
                String::new()
            };
            out.push_str(&format!("  {}{renamed}: {status}", v.vm));
            if let Some(r) = &v.reason {
                out.push_str(&format!(" — {r}"));
            }
            out.push('\n');
            for e in &v.errors {
                out.push_str(&format!("      error: {e}\n"));
            }
            for n in &v.notes {
                out.push_str(&format!("      note: {n}\n"));
            }
        }
        if let Some(d) = &self.dom0_home {
            out.push_str(&format!("  dom0 home: {d}\n"));
        }
        out
    }
}

/// QRS-5: the table shown before acting.
pub fn table(plan: &Plan) -> String {
    let mut rows = vec![[
        "VM".to_owned(),
        "class".to_owned(),
        "template".to_owned(),
        "netvm".to_owned(),
        "label".to_owned(),
        "action".to_owned(),
    ]];
    for v in &plan.vms {
        let netvm = match &v.netvm {
            Reference::Default => "(default)".to_owned(),
            Reference::None => "-".to_owned(),
            Reference::Named(n) => n.clone(),
        };
        let action = match &v.action {
            Action::Create if v.name != v.backup_name => format!("create as {}", v.name),
            Action::Create => "create".to_owned(),
            Action::Skip(w) => format!("skip: {w}"),
            Action::Broken(w) => format!("BROKEN: {w}"),
        };
        rows.push([
            v.backup_name.clone(),
            v.class.clone(),
            v.template.clone().unwrap_or_else(|| "-".to_owned()),
            netvm,
            v.label.clone(),
            action,
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c == 5 {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if plan.dom0.is_some() {
        out.push_str("dom0 home: restored into a new home-restore-<time> directory\n");
    }
    out
}
