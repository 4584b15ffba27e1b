//! Requirements of SPEC.md that no archive vector (tests/vectors/) can exercise: bounds
//! too large for a committed file and the verifier<->restore protocol. Each test drives the
//! format crate directly.

use qbackup_format::limits::{
    MAX_MEMBERS, MAX_PROTO_LABEL_LEN, MAX_PROTO_MANIFEST_LEN, MAX_PROTO_MESSAGE_LEN,
};
use qbackup_format::outer_tar::OuterReader;
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{record_type as t, Layout, Manifest, ManifestVm, Record};
use qbackup_format::qubes_xml::NetVm;
use qbackup_format::ErrorClass;

/// LIM-7: an outer stream of more than `MAX_MEMBERS` (empty) members is refused when the
/// member after the limit is announced, without reading further. No archive vector can hold
/// four million members, so this drives the format crate's outer reader directly.
#[test]
fn outer_member_count_is_bounded() {
    /// Endless identical headers of an empty member `a.000`.
    struct Members(Vec<u8>, usize);
    impl std::io::Read for Members {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let mut n = 0;
            while n < buf.len() {
                let k = (buf.len() - n).min(512 - self.1);
                buf[n..n + k].copy_from_slice(&self.0[self.1..self.1 + k]);
                self.1 = (self.1 + k) % 512;
                n += k;
            }
            Ok(n)
        }
    }
    let header = qbackup_tests::ustar_header("a.000", 0, b'0').to_vec();
    let mut r = OuterReader::new(std::io::BufReader::with_capacity(
        1 << 20,
        Members(header, 0),
    ));
    let mut count = 0u64;
    let err = loop {
        match r.next_member() {
            Ok(Some(_)) => count += 1,
            Ok(None) => panic!("endless stream ended"),
            Err(e) => break e,
        }
    };
    assert_eq!(count, MAX_MEMBERS);
    assert_eq!(err.class(), ErrorClass::LimitExceeded);
}

/// Decode a whole stream; the first error's class, if any.
fn decode(bytes: &[u8]) -> Option<ErrorClass> {
    let mut d = Decoder::new(bytes);
    loop {
        match d.read_record() {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(e) => return Some(e.class()),
        }
    }
}

fn hello() -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.hello().expect("hello");
    e.into_inner()
}

/// A record header (type, big-endian payload length) and payload.
fn record(record_type: u8, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![record_type];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn one_vm(label: &str) -> Manifest {
    Manifest {
        vms: vec![ManifestVm {
            name: "work".into(),
            class: "AppVM".into(),
            label: Some(label.into()),
            template: None,
            netvm: NetVm::Default,
            layout: Layout::Volumes,
            backup_size: 0,
            expected_files: vec!["private.img".into()],
        }],
        others: Vec::new(),
    }
}

/// PROTO-1 (the protocol lives in `qbackup_format::protocol`), LIM-29: a manifest record
/// announcing more than `MAX_PROTO_MANIFEST_LEN` bytes is refused from its header alone.
#[test]
fn protocol_manifest_record_is_bounded() {
    let mut s = hello();
    s.extend(record(t::MANIFEST, MAX_PROTO_MANIFEST_LEN as u32 + 1, &[]));
    assert_eq!(decode(&s), Some(ErrorClass::LimitExceeded));
}

/// PROTO-3: a manifest whose VM claims to expect u32::MAX files is refused before any name
/// is read (at most the allowlist's names can be expected).
#[test]
fn protocol_file_count_is_bounded() {
    let mut p = 1u32.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 2, b'v', b'm', 0, 5]);
    p.extend_from_slice(b"AppVM");
    p.extend_from_slice(&[0, 0, 0, 0]); // no label, no template, netvm default, volumes
    p.extend_from_slice(&0u64.to_be_bytes()); // backup-size: unbounded
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    let mut s = hello();
    s.extend(record(t::MANIFEST, p.len() as u32, &p));
    assert_eq!(decode(&s), Some(ErrorClass::LimitExceeded));
}

/// LIM-31: an error record longer than a `MAX_PROTO_MESSAGE_LEN` message is refused from its
/// header; the encoder cuts a longer message to the limit instead of writing it.
#[test]
fn protocol_error_message_is_bounded() {
    let mut s = hello();
    s.extend(record(
        t::ERROR,
        (3 + MAX_PROTO_MESSAGE_LEN + 1) as u32,
        &[],
    ));
    assert_eq!(decode(&s), Some(ErrorClass::LimitExceeded));

    let mut e = Encoder::new(Vec::new());
    e.hello().expect("hello");
    e.error(
        ErrorClass::Malformed,
        &"m".repeat(3 * MAX_PROTO_MESSAGE_LEN),
    )
    .expect("error record");
    let bytes = e.into_inner();
    let mut d = Decoder::new(&bytes[..]);
    let message = loop {
        match d.read_record() {
            Ok(Some(Record::Error { message, .. })) => break message,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error record"),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        !message.is_empty() && message.len() <= MAX_PROTO_MESSAGE_LEN,
        "{}",
        message.len()
    );
}

/// LIM-32: a VM label of `MAX_PROTO_LABEL_LEN` bytes passes, one byte more is refused.
#[test]
fn protocol_label_is_bounded() {
    let ok = |label: &str| {
        let mut e = Encoder::new(Vec::new());
        e.hello().expect("hello");
        e.manifest(&one_vm(label)).map_err(|e| e.class())
    };
    assert_eq!(ok(&"l".repeat(MAX_PROTO_LABEL_LEN)), Ok(()));
    assert_eq!(
        ok(&"l".repeat(MAX_PROTO_LABEL_LEN + 1)),
        Err(ErrorClass::Malformed)
    );
}
