//! Error policy (SPEC.md ERR-1).
//!
//! Every failure carries one [`ErrorClass`] from a small fixed vocabulary, which is also
//! the expectation vocabulary of the conformance vectors and maps to the binaries' exit
//! codes. Parsers stop at the first violation. Messages name what was expected and what
//! came, but MAC failures stay coarse: they never say *why* a MAC did not match.

use std::fmt;

/// The outcome classes of SPEC.md ERR-2, in the order of their exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClass {
    /// The passphrase does not open the backup header.
    WrongPassphrase,
    /// The backup header is missing, unauthenticated, or fails its grammar.
    HeaderFailure,
    /// A member failed its MAC (HMAC file or scrypt container MAC).
    MacFailure,
    /// Members arrived in an order the format forbids (gaps, repeats, strays).
    OrderFailure,
    /// Data qubes.xml says is in the backup is not there.
    MissingData,
    /// A length, count, cost or size exceeded a named limit (SPEC.md LIM-*).
    LimitExceeded,
    /// A name would escape the destination or is otherwise not a safe relative path.
    UnsafePath,
    /// Bytes that do not follow the grammar of their layer.
    Malformed,
    /// The input ended before the format said it could.
    Truncated,
    /// A feature of the format (version, cipher, digest, filter, tar entry type) this
    /// implementation does not handle.
    Unsupported,
    /// The environment failed (read/write error, disk full, interrupted): not the archive's fault.
    Io,
}

impl ErrorClass {
    /// All classes, for documentation and conformance harnesses.
    pub const ALL: [ErrorClass; 11] = [
        ErrorClass::WrongPassphrase,
        ErrorClass::HeaderFailure,
        ErrorClass::MacFailure,
        ErrorClass::OrderFailure,
        ErrorClass::MissingData,
        ErrorClass::LimitExceeded,
        ErrorClass::UnsafePath,
        ErrorClass::Malformed,
        ErrorClass::Truncated,
        ErrorClass::Unsupported,
        ErrorClass::Io,
    ];

    /// The kebab-case name used in JSON output and conformance vectors.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::WrongPassphrase => "wrong-passphrase",
            ErrorClass::HeaderFailure => "header-failure",
            ErrorClass::MacFailure => "mac-failure",
            ErrorClass::OrderFailure => "order-failure",
            ErrorClass::MissingData => "missing-data",
            ErrorClass::LimitExceeded => "limit-exceeded",
            ErrorClass::UnsafePath => "unsafe-path",
            ErrorClass::Malformed => "malformed",
            ErrorClass::Truncated => "truncated",
            ErrorClass::Unsupported => "unsupported",
            ErrorClass::Io => "io",
        }
    }

    /// Inverse of [`ErrorClass::as_str`].
    pub fn parse(s: &str) -> Option<ErrorClass> {
        ErrorClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The process exit code for this class (SPEC.md ERR-3; README "Exit codes").
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorClass::WrongPassphrase => 10,
            ErrorClass::HeaderFailure => 11,
            ErrorClass::MacFailure => 12,
            ErrorClass::OrderFailure => 13,
            ErrorClass::MissingData => 14,
            ErrorClass::LimitExceeded => 15,
            ErrorClass::UnsafePath => 16,
            ErrorClass::Malformed => 17,
            ErrorClass::Truncated => 18,
            ErrorClass::Unsupported => 19,
            ErrorClass::Io => 20,
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified error with a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    class: ErrorClass,
    message: String,
}

impl Error {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Error {
        Error {
            class,
            message: message.into(),
        }
    }
    pub fn class(&self) -> ErrorClass {
        self.class
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Prefix the message with context (e.g. the member name), keeping the class.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error {
            class: self.class,
            message: format!("{what}: {}", self.message),
        }
    }
    /// Re-classify (e.g. a chunk whose scrypt passphrase check fails after the header
    /// proved the passphrase right is a MAC failure, not a wrong passphrase).
    pub fn reclass(self, class: ErrorClass) -> Error {
        Error { class, ..self }
    }
    pub fn malformed(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::Malformed, message)
    }
    pub fn truncated(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::Truncated, message)
    }
    pub fn limit(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::LimitExceeded, message)
    }
    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::Unsupported, message)
    }
    pub fn unsafe_path(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::UnsafePath, message)
    }
    pub fn mac(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::MacFailure, message)
    }
    pub fn order(message: impl Into<String>) -> Error {
        Error::new(ErrorClass::OrderFailure, message)
    }

    /// Classify an I/O error from a reader of archive bytes: an unexpected EOF is
    /// truncation, [`io::ErrorKind::InvalidData`] raised by a decoder is malformed input,
    /// anything else is the environment's fault.
    pub fn from_read(e: std::io::Error, what: impl fmt::Display) -> Error {
        use std::io::ErrorKind;
        // Errors raised by our own Read adapters carry an `Error` inside.
        if let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
            return inner.clone();
        }
        let class = match e.kind() {
            ErrorKind::UnexpectedEof => ErrorClass::Truncated,
            ErrorKind::InvalidData | ErrorKind::InvalidInput => ErrorClass::Malformed,
            _ => ErrorClass::Io,
        };
        Error::new(class, format!("{what}: {e}"))
    }

    /// Wrap into an `io::Error` so a `Read` adapter can carry a classified error through
    /// code that only knows `io::Error`; [`Error::from_read`] unwraps it again.
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::other(self)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.class)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `bail!(Class, "fmt", args…)` returns early with a classified [`Error`].
#[macro_export]
macro_rules! bail {
    ($class:ident, $($arg:tt)+) => {
        return Err($crate::error::Error::new($crate::error::ErrorClass::$class, format!($($arg)+)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_round_trip_and_exit_codes_are_distinct() {
        let mut codes = std::collections::HashSet::new();
        for c in ErrorClass::ALL {
            assert_eq!(ErrorClass::parse(c.as_str()), Some(c));
            assert!(codes.insert(c.exit_code()), "duplicate exit code for {c}");
        }
    }

    #[test]
    fn classified_errors_survive_io_wrapping() {
        let e = Error::mac("bad").into_io();
        assert_eq!(Error::from_read(e, "x").class(), ErrorClass::MacFailure);
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(Error::from_read(eof, "x").class(), ErrorClass::Truncated);
    }
}
