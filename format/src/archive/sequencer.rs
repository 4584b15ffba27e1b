//! Member order (SPEC.md ORD-1 … ORD-8) as an explicit state machine.
//!
//! The state, not string matching, enforces that chunks come `.000`, `.001`, … without
//! gaps, that every v2/v3 data chunk is followed by its `.hmac`, that v4 members are
//! `.enc`, that qubes.xml is one chunk right after the header, and that no file repeats.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::header::Version;
use crate::member_name::{chunk_name, ChunkKind, MemberName, QUBES_XML};

/// What the member just seen is, once its place in the order checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A chunk holding data: v2/v3 data (`PATH.NNN`) or a v4 container (`PATH.NNN.enc`).
    /// `index == 0` starts a new file.
    Chunk { path: String, index: u32 },
    /// The v2/v3 MAC of the chunk just before it.
    ChunkMac { path: String, index: u32 },
}

#[derive(Debug)]
enum State {
    /// Nothing yet after the header: qubes.xml comes next (ORD-2).
    QubesXml,
    /// v2/v3: the `.hmac` of this chunk comes next (ORD-4).
    MacOf { path: String, index: u32 },
    /// The next chunk of `current`, or chunk `.000` of a new file (ORD-3).
    NextChunk { current: Option<(String, u32)> },
}

/// Checks member order after the header and its MAC (ORD-1 is the driver's first step).
#[derive(Debug)]
pub struct Sequencer {
    version: Version,
    state: State,
    files: HashSet<String>,
}

impl Sequencer {
    pub fn new(version: Version) -> Sequencer {
        Sequencer {
            version,
            state: State::QubesXml,
            files: HashSet::new(),
        }
    }

    fn data_kind(&self) -> ChunkKind {
        if self.version == Version::V4 {
            ChunkKind::Enc
        } else {
            ChunkKind::Data
        }
    }

    fn expectation(&self) -> String {
        let suffix = if self.version == Version::V4 {
            ".enc"
        } else {
            ""
        };
        match &self.state {
            State::QubesXml => format!("{}{suffix}", chunk_name(QUBES_XML, 0)),
            State::MacOf { path, index } => format!("{}.hmac", chunk_name(path, *index)),
            State::NextChunk {
                current: Some((path, index)),
            } => format!(
                "{}{suffix} or the first chunk of another file",
                chunk_name(path, index + 1)
            ),
            State::NextChunk { current: None } => "the first chunk of a file".to_string(),
        }
    }

    fn unexpected(&self, got: &MemberName, untrusted: &[u8]) -> Error {
        let _ = got;
        Error::order(format!(
            "unexpected member {}, expected {}",
            crate::paths::escape(untrusted),
            self.expectation()
        ))
    }

    /// Feed the next member's untrusted name; get its role or an order failure.
    pub fn on_member(&mut self, untrusted_name: &[u8]) -> Result<Step> {
        let name = MemberName::parse(untrusted_name)?;
        let data_kind = self.data_kind();
        let MemberName::Chunk { path, index, kind } = &name else {
            return Err(self.unexpected(&name, untrusted_name));
        };
        let (path, index, kind) = (path.clone(), *index, *kind);
        if self.version != Version::V4 && kind == ChunkKind::Enc {
            return Err(Error::malformed(format!(
                "member {}: .enc names occur only in version 4 (NAME-5)",
                crate::paths::escape(untrusted_name)
            )));
        }
        if self.version == Version::V4 && path.ends_with("/.") {
            return Err(Error::unsafe_path(format!(
                "member {}: a `.` component is allowed only in v2/v3 (NAME-4)",
                crate::paths::escape(untrusted_name)
            )));
        }
        let step = match &self.state {
            State::QubesXml => {
                if path != QUBES_XML || index != 0 || kind != data_kind {
                    return Err(self.unexpected(&name, untrusted_name));
                }
                self.files.insert(path.clone());
                Step::Chunk { path, index }
            }
            State::MacOf {
                path: want,
                index: want_index,
            } => {
                if kind != ChunkKind::Hmac || &path != want || index != *want_index {
                    return Err(self.unexpected(&name, untrusted_name));
                }
                Step::ChunkMac { path, index }
            }
            State::NextChunk { current } => {
                if kind != data_kind {
                    return Err(self.unexpected(&name, untrusted_name));
                }
                let continues = matches!(current, Some((p, i)) if *p == path && Some(index) == i.checked_add(1));
                if !continues {
                    if index != 0 || path == QUBES_XML {
                        return Err(self.unexpected(&name, untrusted_name));
                    }
                    if !self.files.insert(path.clone()) {
                        return Err(Error::order(format!(
                            "file {path} appears twice in the archive (ORD-6)"
                        )));
                    }
                }
                Step::Chunk { path, index }
            }
        };
        self.state = match &step {
            Step::Chunk { path, index } if self.version != Version::V4 => State::MacOf {
                path: path.clone(),
                index: *index,
            },
            Step::Chunk { path, index } | Step::ChunkMac { path, index } => State::NextChunk {
                current: if path == QUBES_XML {
                    None
                } else {
                    Some((path.clone(), *index))
                },
            },
        };
        Ok(step)
    }

    /// The archive ended: it must not end while a MAC or qubes.xml is still owed.
    pub fn finish(&self) -> Result<()> {
        match &self.state {
            State::NextChunk { .. } => Ok(()),
            _ => Err(Error::truncated(format!(
                "archive ends where {} was expected",
                self.expectation()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    fn feed(version: Version, names: &[&str]) -> Result<Vec<Step>> {
        let mut s = Sequencer::new(version);
        let steps = names
            .iter()
            .map(|n| s.on_member(n.as_bytes()))
            .collect::<Result<Vec<_>>>()?;
        s.finish()?;
        Ok(steps)
    }

    #[test]
    fn accepts_v4_order() {
        let steps = feed(
            Version::V4,
            &[
                "qubes.xml.000.enc",
                "vm3/private.img.000.enc",
                "vm3/private.img.001.enc",
                "vm3/firewall.xml.000.enc",
                "dom0-home/user.000.enc",
            ],
        )
        .unwrap();
        assert_eq!(steps.len(), 5);
        assert_eq!(
            steps[2],
            Step::Chunk {
                path: "vm3/private.img".into(),
                index: 1
            }
        );
    }

    #[test]
    fn accepts_v3_order_with_macs_and_directories() {
        feed(
            Version::V3,
            &[
                "qubes.xml.000",
                "qubes.xml.000.hmac",
                "vm5/private.img.000",
                "vm5/private.img.000.hmac",
                "vm9/..000",
                "vm9/..000.hmac",
                "vm9/..001",
                "vm9/..001.hmac",
            ],
        )
        .unwrap();
    }

    #[test]
    fn long_index_sequences_pass_999_to_1000() {
        let mut s = Sequencer::new(Version::V4);
        s.on_member(b"qubes.xml.000.enc").unwrap();
        for i in 0..=1001u32 {
            s.on_member(format!("{}.enc", chunk_name("vm3/root.img", i)).as_bytes())
                .unwrap();
        }
    }

    #[test]
    fn refuses_order_violations() {
        let order = ErrorClass::OrderFailure;
        let cases: &[(&[&str], ErrorClass)] = &[
            (&["vm3/private.img.000.enc"], order),
            (&["qubes.xml.000.enc", "vm3/private.img.001.enc"], order),
            (
                &[
                    "qubes.xml.000.enc",
                    "vm3/private.img.000.enc",
                    "vm3/private.img.002.enc",
                ],
                order,
            ),
            (
                &["qubes.xml.000.enc", "a.000.enc", "b.000.enc", "a.000.enc"],
                order,
            ),
            (&["qubes.xml.000.enc", "qubes.xml.001.enc"], order),
            (&["qubes.xml.000.enc", "vm3/private.img.000"], order),
            (&["qubes.xml.000.enc", "backup-header"], order),
        ];
        for (names, class) in cases {
            assert_eq!(
                feed(Version::V4, names).unwrap_err().class(),
                *class,
                "{names:?}"
            );
        }
        let v3: &[(&[&str], ErrorClass)] = &[
            (&["qubes.xml.000", "vm5/private.img.000"], order),
            (
                &["qubes.xml.000", "qubes.xml.000.hmac", "a.000", "b.000.hmac"],
                order,
            ),
            (
                &["qubes.xml.000", "qubes.xml.000.hmac", "a.000"],
                ErrorClass::Truncated,
            ),
            // NAME-5: `.enc` is v4 only; in v2/v3 the name is malformed.
            (
                &["qubes.xml.000", "qubes.xml.000.hmac", "a.000.enc"],
                ErrorClass::Malformed,
            ),
        ];
        // NAME-4: `vmN/.` is a v2/v3 whole-directory file only.
        assert_eq!(
            feed(Version::V4, &["qubes.xml.000.enc", "vm3/..000.enc"])
                .unwrap_err()
                .class(),
            ErrorClass::UnsafePath
        );
        assert!(feed(
            Version::V3,
            &[
                "qubes.xml.000",
                "qubes.xml.000.hmac",
                "vm3/..000",
                "vm3/..000.hmac"
            ]
        )
        .is_ok());
        for (names, class) in v3 {
            assert_eq!(
                feed(Version::V3, names).unwrap_err().class(),
                *class,
                "{names:?}"
            );
        }
    }
}
