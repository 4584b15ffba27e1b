//! PROTO-2 / GEN-4: the decoder never sizes an allocation from a claimed length. A
//! counting global allocator records the largest single request while hostile streams
//! that claim huge lengths and counts are decoded. (One test in this binary, so no other
//! test thread allocates meanwhile.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use qbackup_format::limits::MAX_PROTO_MANIFEST_LEN;
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::record_type as t;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{Begin, FileKind, Manifest, VmConfig};
use qbackup_format::ErrorClass;

mod common;
use common::work_vm;

struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn hello() -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.into_inner()
}

fn decode_class(bytes: &[u8]) -> ErrorClass {
    let mut d = Decoder::new(bytes);
    loop {
        match d.read_record() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("hostile stream accepted"),
            Err(e) => return e.class(),
        }
    }
}

/// PROTO-2, PROTO-11: claimed lengths, counts and sizes allocate nothing.
#[test]
fn claimed_lengths_and_counts_do_not_allocate() {
    let mut cases: Vec<(Vec<u8>, ErrorClass)> = Vec::new();
    // A manifest claiming LIM-29 bytes (the limit) that sends 100 bytes.
    let mut s = hello();
    s.push(t::MANIFEST);
    s.extend_from_slice(&(MAX_PROTO_MANIFEST_LEN as u32).to_be_bytes());
    s.extend_from_slice(&[0u8; 100]);
    cases.push((s, ErrorClass::Truncated));
    // Lengths beyond every limit.
    for ty in [t::MANIFEST, t::DATA, t::BEGIN, t::ERROR] {
        let mut s = hello();
        s.push(ty);
        s.extend_from_slice(&u32::MAX.to_be_bytes());
        cases.push((s, ErrorClass::LimitExceeded));
    }
    // 10 000 VMs claimed, one sent that claims u32::MAX expected files.
    let mut s = hello();
    let mut p = 10_000u32.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 2, b'v', b'm', 0, 5]);
    p.extend_from_slice(b"AppVM");
    p.extend_from_slice(&[0, 0, 0, 0]);
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    s.push(t::MANIFEST);
    s.extend_from_slice(&(p.len() as u32).to_be_bytes());
    s.extend_from_slice(&p);
    cases.push((s, ErrorClass::LimitExceeded));
    // A begin claiming a 16 TiB file with 16 TiB of data, then one byte.
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest {
        vms: vec![work_vm(&[])],
        others: Vec::new(),
    })
    .unwrap();
    e.config(0, &VmConfig::default()).unwrap();
    e.begin(&Begin {
        vm: 0,
        name: "private.img".into(),
        kind: FileKind::Regular,
        mode: 0o600,
        size: 16 << 40,
        data_bytes: 16 << 40,
    })
    .unwrap();
    e.data(0, b"x").unwrap();
    cases.push((e.into_inner(), ErrorClass::Truncated));

    // A config record announcing LIM-59 bytes and counts at their limits, cut short.
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest {
        vms: vec![work_vm(&[])],
        others: Vec::new(),
    })
    .unwrap();
    let mut s = e.into_inner();
    s.push(t::CONFIG);
    s.extend_from_slice(&(qbackup_format::limits::MAX_PROTO_CONFIG_LEN as u32).to_be_bytes());
    s.extend_from_slice(&0u32.to_be_bytes());
    s.extend_from_slice(&1024u16.to_be_bytes());
    cases.push((s, ErrorClass::Truncated));

    let before = LARGEST.swap(0, Ordering::Relaxed);
    assert!(before > 0, "allocator not counting");
    for (s, want) in &cases {
        assert_eq!(decode_class(s), *want);
    }
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= 64 << 10,
        "largest allocation {largest} bytes while decoding hostile lengths"
    );
}
