//! What qbackup's binaries say to people and to programs, in one place for both
//! (`qbackup-verify` and `qbackup-pack`):
//!
//! - [`SCHEMA`], the version of every JSON document and JSON line they print (README
//!   "JSON output");
//! - [`say!`]: a line on stderr, which becomes a JSON `message` event in JSON mode
//!   ([`set_json_stderr`]), so that stderr then carries only JSON;
//! - [`event`]: one JSON line on stderr (`progress`, `done`, `failed`, `report`, …);
//! - [`progress`]: the progress reporter (a bar on a terminal, or JSON lines);
//! - [`VERSION`]: the crate version with the git revision, for `--version`;
//! - [`parse_args`]: clap parsing whose usage errors are JSON in JSON mode.
//!
//! No format logic lives here: the format crate stays pure (no clock, no files).

pub mod progress;
pub mod utc;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{json, Map, Value};

/// The version of the JSON vocabulary: every document and line carries `"schema": SCHEMA`.
/// Raised when a field changes meaning or disappears; new fields do not raise it.
pub const SCHEMA: u32 = 1;

/// `--version`: the package version and the git revision it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("QBACKUP_GIT_REV"),
    ")"
);

/// The flag that switches a command to JSON lines on stderr.
pub const PROGRESS_JSON_FLAG: &str = "--progress-json";

static JSON_STDERR: AtomicBool = AtomicBool::new(false);

/// JSON mode: from now on [`say`] writes `message` events, and a panic is a `failed` event
/// (class `internal`), so stderr carries only JSON lines.
pub fn set_json_stderr(on: bool) {
    JSON_STDERR.store(on, Ordering::SeqCst);
    if on {
        std::panic::set_hook(Box::new(|info| {
            let message = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_string(),
                None => info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "panic".into()),
            };
            event(
                "failed",
                json!({"class": "internal", "exit_code": 1, "message": message}),
            );
        }));
    }
}

/// Whether stderr is in JSON mode.
pub fn json_stderr() -> bool {
    JSON_STDERR.load(Ordering::SeqCst)
}

/// `doc` with `"schema"` set (an object; anything else is wrapped as `{"value": doc}`).
pub fn with_schema(doc: Value) -> Value {
    let mut out = Map::new();
    out.insert("schema".into(), json!(SCHEMA));
    match doc {
        Value::Object(m) => out.extend(m.into_iter().filter(|(k, _)| k != "schema")),
        Value::Null => {}
        other => {
            out.insert("value".into(), other);
        }
    }
    Value::Object(out)
}

/// One JSON line: `{"schema": SCHEMA, "event": kind, …fields}` (`fields` cannot override
/// either).
pub fn event_line(kind: &str, fields: Value) -> String {
    let mut doc = Map::new();
    doc.insert("schema".into(), json!(SCHEMA));
    doc.insert("event".into(), json!(kind));
    if let Value::Object(m) = fields {
        doc.extend(m.into_iter().filter(|(k, _)| k != "schema" && k != "event"));
    }
    Value::Object(doc).to_string()
}

/// Write [`event_line`] to stderr. A reader that went away is not an error of ours.
pub fn event(kind: &str, fields: Value) {
    let line = event_line(kind, fields);
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The `failed` event: the error class (as in the exit-code table), the exit code and
/// the message.
pub fn failed(class: &str, exit_code: i32, message: &str) {
    event(
        "failed",
        json!({"class": class, "exit_code": exit_code, "message": message}),
    );
}

/// A line for a person on stderr, or a `message` event in JSON mode. Use [`say!`].
pub fn say(args: std::fmt::Arguments<'_>) {
    if json_stderr() {
        event("message", json!({"message": args.to_string()}));
    } else {
        let _ = writeln!(std::io::stderr(), "{args}");
    }
}

/// `eprintln!` without its panic when stderr is a pipe whose reader went away (EPIPE): a
/// message nobody reads must not change the exit code or stop a cancellation. In JSON mode
/// the line is a `message` event.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say(format_args!($($arg)*))
    };
}

/// Parse the command line. When it asks for JSON ([`PROGRESS_JSON_FLAG`]), stderr is in
/// JSON mode from the start and a usage error is a `failed` event (class `usage`, exit 2);
/// `--help` and `--version` print their text on stdout as usual.
pub fn parse_args<C: clap::Parser>() -> C {
    let json = std::env::args_os().any(|a| a == PROGRESS_JSON_FLAG);
    if json {
        set_json_stderr(true);
    }
    match C::try_parse() {
        Ok(c) => c,
        Err(e) if json && e.use_stderr() => {
            failed("usage", 2, e.to_string().trim_end());
            std::process::exit(2);
        }
        Err(e) => e.exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_schema_and_kind() {
        let line = event_line("done", json!({"event": "x", "schema": 9, "out": "a.bin"}));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"schema": SCHEMA, "event": "done", "out": "a.bin"})
        );
        assert!(!line.contains('\n'), "one line: {line}");
        let doc = with_schema(json!({"ok": true, "schema": 0}));
        assert_eq!(doc, json!({"schema": SCHEMA, "ok": true}));
        assert_eq!(with_schema(json!(3)), json!({"schema": SCHEMA, "value": 3}));
    }

    #[test]
    fn version_names_a_revision() {
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")), "{VERSION}");
        let rev = VERSION.split("(git ").nth(1).unwrap().trim_end_matches(')');
        assert!(!rev.is_empty(), "{VERSION}");
    }
}
