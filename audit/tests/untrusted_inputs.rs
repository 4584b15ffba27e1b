//! What the audit reads from others — ledger records (an object ledger is writable by
//! whoever can write the bucket), the verifier's JSON report, passphrase maps, shard and
//! duration arguments — gives an error or a value on any input, never a panic.

use proptest::prelude::*;
use qbackup_audit::location::{record_key, Version};
use qbackup_audit::record::Record;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arguments_never_panic(s in ".{0,40}") {
        let _ = qbackup_audit::span::parse(&s);
        let _ = qbackup_audit::shard::Shard::parse(&s);
        let _ = qbackup_audit::s3::S3Url::parse(&s);
    }

    #[test]
    fn ledger_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = qbackup_audit::ledger::parse(&bytes, "00", "fuzz");
    }

    #[test]
    fn mutated_records_parse_or_fail_cleanly(pos in 0usize..400, byte in any::<u8>()) {
        let v = Version::S3 { etag: "\"e\"".into(), size: 10 };
        let r = Record::pending("s3://b/k", &v, 5);
        let mut bytes = serde_json::to_vec(&r).unwrap();
        let i = pos % bytes.len();
        bytes[i] = byte;
        if let Ok(back) = qbackup_audit::ledger::parse(&bytes, &record_key("s3://b/k", &v), "x") {
            // Whatever parses is a whole record of the same key.
            prop_assert_eq!(back.key, r.key);
        }
    }

    #[test]
    fn verifier_reports_never_panic(s in "[\\[\\]{}\":,0-9a-z ]{0,200}") {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) {
            let _ = qbackup_audit::child::kdf_count(&v);
        }
    }

    #[test]
    fn passphrase_maps_never_panic(text in "[ -~\n\t]{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        let map = dir.path().join("map");
        std::fs::write(&map, text).unwrap();
        if let Ok(p) = qbackup_audit::passphrases::Passphrases::load_map(&map) {
            let _ = p.for_location("s3://b/k");
        }
    }
}

#[test]
fn a_record_of_another_key_or_schema_is_refused() {
    let v = Version::S3 {
        etag: "\"e\"".into(),
        size: 10,
    };
    let r = Record::pending("s3://b/k", &v, 5);
    let bytes = serde_json::to_vec(&r).unwrap();
    let err =
        qbackup_audit::ledger::parse(&bytes, "ffffffffffffffffffffffffffffffff", "x").unwrap_err();
    assert!(err.contains("holds key"), "{err}");
    let mut other = r.clone();
    other.schema = 9;
    let err = qbackup_audit::ledger::parse(&serde_json::to_vec(&other).unwrap(), &r.key, "x")
        .unwrap_err();
    assert!(err.contains("schema 9"), "{err}");
}

/// LIM-65: a ledger record beyond the limit is refused, not read into memory whole.
#[test]
fn an_oversized_ledger_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut storage = None;
    let ledger =
        qbackup_audit::ledger::Ledger::open(&dir.path().display().to_string(), &mut storage)
            .unwrap();
    let name = format!("{}.json", "a".repeat(32));
    let big = vec![b' '; (qbackup_audit::ledger::MAX_RECORD_BYTES + 1) as usize];
    std::fs::write(dir.path().join("records").join(name), big).unwrap();
    let err = ledger.load().unwrap_err();
    assert!(err.contains("bytes a record may be"), "{err}");
}
